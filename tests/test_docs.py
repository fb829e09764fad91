"""The docs name only flags that exist: every `--flag` the README gives a `mesh` command, and
every flag the component pages (docs/router.md, pod.md, puller.md) name, is that command's."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mesh.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])")


def _commands() -> dict[str, set[str]]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()
    }


def test_every_flag_given_to_a_mesh_command_in_the_readme_and_docs_exists() -> None:
    known = _commands()
    missing = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in re.finditer(r"\bmesh ([a-z][\w-]*)((?: [^`\n|]*)?)", path.read_text()):
            command, rest = match.groups()
            for flag in FLAG.findall(rest) if command in known else ():
                if flag not in known[command]:
                    missing.append(f"{path.name}: mesh {command} {flag}")
    assert missing == []


@pytest.mark.parametrize("page", ["router", "pod", "puller"])
def test_a_component_page_names_only_flags_of_the_commands_it_describes(page: str) -> None:
    commands = _commands()
    text = (ROOT / "docs" / f"{page}.md").read_text()
    # The page's own command, and those it names (`mesh status`, `mesh serve`).
    described = {page} | set(re.findall(r"\bmesh ([a-z][\w-]*)", text)) & set(commands)
    known = set().union(*(commands[c] for c in described))
    named = {
        flag for line in text.splitlines() if "bench/" not in line for flag in FLAG.findall(line)
    }
    assert sorted(named - known) == []
