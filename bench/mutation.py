"""Mutation testing of the decision code: would the suite notice if a decision were wrong?

mutmut (the `bench` extra) rewrites one operator, constant or call at a time in the code that
pyproject.toml's [tool.mutmut] names (mesh/placement/, the pod cache, the router's miss path
in mesh/router/loader.py and mesh/cluster/claims.py) and runs the tests that cover it; a mutant
the tests still pass on "survived". This is a bench, not CI: it runs for tens of minutes of CPU.

    python bench/mutation.py                     # each scope in turn, in a copy under bench/out/
    python bench/mutation.py --scope placement   # one area: placement, cache or miss
    python bench/mutation.py --minutes 20        # stop after 20 minutes, report what ran

It works in a copy of the tree (`mutmut` writes a `mutants/` folder), runs under `nice`, and
writes bench/out/mutation-<scope>.txt: the score (killed / (killed + survived)) and each
survivor's name and diff. A stop at the time bound reports the mutants that ran; the others
count as not run, never as killed. The score is given twice: with timeouts counted as killed
(as mutmut counts them) and with only the mutants a test failed on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
# mutmut's names: module path, then (for methods) ǁClassǁ, then the function, then __mutmut_N.
SCOPES = {
    "placement": ["mesh.placement.*"],
    "cache": ["mesh.pod.cache.*", "mesh.pod.sizing.*", "mesh.pod.loading.*"],
    "miss": [
        f"mesh.router.loader.xǁLoaderǁ{name}__mutmut_*"
        for name in (
            "ensure_loaded",
            "_settle",
            "add_copy_for",
            "add_copy",
            "_load",
            "_claim",
            "_wait_for_other",
            "_tell_pod_to_load",
        )
    ]
    + ["mesh.cluster.claims.*"],
}
# A timeout (the tests ran past their time bound) is reported apart: on a busy machine some
# are slowness, not a hang the mutant caused.
KILLED = {"killed", "suspicious", "segfault"}


def copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "mutants", "out", "__pycache__", ".*_cache", "demo-models"
    )
    shutil.copytree(ROOT, dest, ignore=ignore)


def run(scope: str, minutes: float, children: int) -> Path:
    work = OUT / f"mutation-tree-{scope}"
    copy_tree(work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutants/ comes first
    mutmut = [sys.executable, "-m", "mutmut"]
    names = SCOPES[scope]
    started = time.monotonic()
    try:
        subprocess.run(
            ["nice", "-n", "19", *mutmut, "run", "--max-children", str(children), *names],
            cwd=work,
            env=env,
            timeout=minutes * 60,
            check=False,
        )
        stopped = ""
    except subprocess.TimeoutExpired:
        stopped = f" (stopped at the {minutes:g} min bound: not every mutant ran)"
    elapsed = time.monotonic() - started
    listing = subprocess.run(
        [*mutmut, "results", "--all", "true"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    results: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and any(_matches(name, pattern) for pattern in names):
            results[name] = status.strip()
    counts = Counter("killed" if s in KILLED else s for s in results.values())
    killed, survived, timeout = counts["killed"], counts["survived"], counts["timeout"]
    judged = killed + survived + timeout

    def share(n: int) -> str:
        return f"{n / judged:.1%}" if judged else "n/a"

    other = {k: v for k, v in counts.items() if k not in ("killed", "survived", "timeout")}
    lines = [
        f"scope {scope}: {len(results)} mutants, {elapsed / 60:.1f} min{stopped}",
        f"score {share(killed + timeout)} with timeouts counted as killed (mutmut's count), "
        f"{share(killed)} killed by a failing test (killed {killed}, timeout {timeout}, "
        f"survived {survived}; other: {other})",
        "",
    ]
    for name, status in sorted(results.items()):
        if status == "survived":
            diff = subprocess.run(
                [*mutmut, "show", name],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            lines += [f"survived: {name}", diff.strip(), ""]
    report = OUT / f"mutation-{scope}.txt"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2]))
    print(f"report: {report}")
    return report


def _matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scope", choices=[*SCOPES, "all"], default="all")
    parser.add_argument("--minutes", type=float, default=60.0, help="time bound for the run")
    parser.add_argument("--children", type=int, default=1, help="mutants run at once")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    scopes = list(SCOPES) if args.scope == "all" else [args.scope]
    for scope in scopes:  # one after another, each with its share of the time bound
        run(scope, args.minutes / len(scopes), args.children)


if __name__ == "__main__":
    main()
