"""Unpacking `.tar`, `.tar.gz`/`.tgz` and `.zip` artifacts, safely and within a bound.

Two passes. `plan` reads the member list and refuses the archive before a byte is written if any
member is absolute, climbs with `..`, is a link (symbolic or hard), a device or a FIFO, is
listed twice, or sits under a member that is a file; or if the members add up to more bytes
or more entries than the bound. `unpack` then writes exactly the planned regular files and
directories, each opened with O_EXCL | O_NOFOLLOW inside a fresh directory, and stops any
member that turns out longer than it declared (a zip bomb that lies in its header).

How it fails: UnsafePath (INVALID_ARGUMENT) for a member that could write outside the
directory; ArchiveTooLarge (RESOURCE_EXHAUSTED) past the bound; ArtifactCorrupt (DATA_LOSS)
for an archive that cannot be read. Everything here is blocking I/O: run it in a thread.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from mesh.errors import ArchiveTooLarge, ArtifactCorrupt, UnsafePath
from mesh.puller.paths import safe_relative

Kind = Literal["tar", "zip"]
_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    (".tar.gz", "tar"),
    (".tgz", "tar"),
    (".tar", "tar"),
    (".zip", "zip"),
)
_COPY_BLOCK = 1 << 20


def archive_kind(name: str) -> Kind | None:
    lower = name.lower()
    for suffix, kind in _SUFFIXES:
        if lower.endswith(suffix):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Member:
    path: PurePosixPath
    size: int
    is_dir: bool
    # The name inside the archive, to find it again in the second pass.
    name: str


@dataclass(frozen=True, slots=True)
class Plan:
    kind: Kind
    members: tuple[Member, ...]
    total: int


def plan(archive: Path, kind: Kind, *, max_bytes: int, max_members: int, what: str) -> Plan:
    """Check every member of `archive`; what unpacking it would write."""
    try:
        members = _tar_members(archive, what) if kind == "tar" else _zip_members(archive, what)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ArtifactCorrupt(
            f"{what}: not a readable {kind} archive ({type(exc).__name__})"
        ) from exc
    seen: dict[PurePosixPath, bool] = {}
    total = 0
    for count, member in enumerate(members, 1):
        if count > max_members:
            raise ArchiveTooLarge(f"{what}: more than {max_members} members")
        if member.path in seen and not (member.is_dir and seen[member.path]):
            raise UnsafePath(f"{what}: member {member.name!r} is listed twice")
        seen[member.path] = member.is_dir
        total += member.size
        if total > max_bytes:
            raise ArchiveTooLarge(
                f"{what}: unpacks to more than the archive bound of {max_bytes} bytes"
            )
    for path in seen:
        for parent in path.parents:
            if parent != PurePosixPath(".") and seen.get(parent) is False:
                raise UnsafePath(
                    f"{what}: member {str(path)!r} sits under the file {str(parent)!r}"
                )
    return Plan(kind, tuple(members), total)


def _check(name: str, what: str) -> PurePosixPath:
    # Directory members end with '/'; './x' is common in tarballs made with `tar -C dir .`
    cleaned = name.rstrip("/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    if cleaned in ("", "."):
        return PurePosixPath(".")
    return safe_relative(cleaned, f"{what}: member {name!r}")


def _tar_members(archive: Path, what: str) -> list[Member]:
    out: list[Member] = []
    with tarfile.open(archive, mode="r:*") as tar:
        for info in tar:
            path = _check(info.name, what)
            if info.issym() or info.islnk():
                raise UnsafePath(f"{what}: member {info.name!r} is a link")
            if info.isdir():
                if path != PurePosixPath("."):
                    out.append(Member(path, 0, True, info.name))
            elif info.isreg():
                if path == PurePosixPath("."):
                    raise UnsafePath(f"{what}: member {info.name!r} has no name")
                out.append(Member(path, info.size, False, info.name))
            else:
                raise UnsafePath(f"{what}: member {info.name!r} is a device, FIFO or special file")
    return out


def _zip_members(archive: Path, what: str) -> list[Member]:
    out: list[Member] = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _check(info.filename, what)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafePath(f"{what}: member {info.filename!r} is a link")
            if info.flag_bits & 0x1:
                raise ArtifactCorrupt(f"{what}: member {info.filename!r} is encrypted")
            if info.is_dir():
                if path != PurePosixPath("."):
                    out.append(Member(path, 0, True, info.filename))
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafePath(f"{what}: member {info.filename!r} is a special file")
            else:
                if path == PurePosixPath("."):
                    raise UnsafePath(f"{what}: member {info.filename!r} has no name")
                out.append(Member(path, info.file_size, False, info.filename))
    return out


def unpack(archive: Path, the_plan: Plan, dest: Path, *, what: str) -> int:
    """Write the planned members under `dest` (a new, empty directory); bytes written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        if the_plan.kind == "tar":
            with tarfile.open(archive, mode="r:*") as tar:
                for member in the_plan.members:
                    if member.is_dir:
                        _mkdir(dest, member.path)
                        continue
                    source = tar.extractfile(member.name)
                    if source is None:
                        raise ArtifactCorrupt(f"{what}: member {member.name!r} cannot be read")
                    with source:
                        written += _write(dest, member, source, what)
        else:
            with zipfile.ZipFile(archive) as zf:
                for member in the_plan.members:
                    if member.is_dir:
                        _mkdir(dest, member.path)
                        continue
                    with zf.open(member.name) as source:
                        written += _write(dest, member, source, what)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, KeyError) as exc:
        raise ArtifactCorrupt(f"{what}: the archive cannot be read ({type(exc).__name__})") from exc
    return written


def single_directory(dest: Path) -> Path:
    """`dest`, or the one directory it holds when it holds nothing else (`model/` tarballs)."""
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return dest


def _mkdir(dest: Path, path: PurePosixPath) -> Path:
    target = dest
    for part in path.parts:
        target = target / part
        try:
            target.mkdir()
        except FileExistsError:
            if target.is_symlink() or not target.is_dir():
                raise UnsafePath(f"{path} collides with a file or link") from None
    return target


def _write(dest: Path, member: Member, source: IO[bytes], what: str) -> int:
    parent = _mkdir(dest, member.path.parent) if member.path.parent.parts else dest
    target = parent / member.path.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while block := source.read(_COPY_BLOCK):
            written += len(block)
            if written > member.size:
                raise ArchiveTooLarge(
                    f"{what}: member {member.name!r} is longer than the {member.size} bytes it "
                    "declares"
                )
            out.write(block)
    if written != member.size:
        raise ArtifactCorrupt(
            f"{what}: member {member.name!r} holds {written} bytes, not {member.size}"
        )
    return written


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
