"""Archives unpack safely: no member escapes, no link is followed, no bomb goes off."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from mesh.errors import ArchiveTooLarge, ArtifactCorrupt, UnsafePath
from mesh.puller.archive import archive_kind, plan, single_directory, unpack


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def run(archive: Path, dest: Path, max_bytes: int = 1 << 20, max_members: int = 100) -> int:
    kind = archive_kind(archive.name)
    assert kind is not None
    the_plan = plan(archive, kind, max_bytes=max_bytes, max_members=max_members, what="t")
    return unpack(archive, the_plan, dest, what="t")


@pytest.mark.parametrize("name", ["m.tar", "m.tar.gz", "m.tgz"])
def test_tarballs_unpack_into_the_directory(tmp_path: Path, name: str) -> None:
    archive = make_tar(
        tmp_path / name, [("model/model.onnx", b"x" * 100), ("model/mesh.json", b"{}")]
    )
    assert run(archive, tmp_path / "out") == 102
    assert (tmp_path / "out" / "model" / "model.onnx").read_bytes() == b"x" * 100
    assert single_directory(tmp_path / "out") == tmp_path / "out" / "model"


def test_zips_unpack_into_the_directory(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", [("a/b.txt", b"hello"), ("c.txt", b"!")])
    assert run(archive, tmp_path / "out") == 6
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"hello"
    assert single_directory(tmp_path / "out") == tmp_path / "out"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "members",
    [
        [("../evil.txt", b"x")],
        [("model/../../evil.txt", b"x")],
        [("/etc/evil.txt", b"x")],
        [_link("model/link", "/etc/passwd")],
        [_link("model/link", "../../outside")],
        [("model/a", b"x"), _link("model/hard", "model/a", tarfile.LNKTYPE)],
        [("a", b"x"), ("a", b"y")],
        [("a", b"x"), ("a/b", b"y")],
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-abs",
        "symlink-rel",
        "hardlink",
        "twice",
        "under-a-file",
    ],
)
def test_tar_members_that_could_escape_are_refused_before_writing(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]
) -> None:
    archive = make_tar(tmp_path / "bad.tar", members)
    with pytest.raises(UnsafePath):
        run(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_zip_members_with_dotdot_or_links_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath):
        run(make_zip(tmp_path / "dots.zip", [("../evil.txt", b"x")]), tmp_path / "out")
    link = zipfile.ZipInfo("model/link")
    link.external_attr = 0o120777 << 16  # S_IFLNK
    with pytest.raises(UnsafePath, match="link"):
        run(make_zip(tmp_path / "link.zip", [(link, b"/etc/passwd")]), tmp_path / "out")
    with pytest.raises(UnsafePath):
        run(make_zip(tmp_path / "win.zip", [("..\\evil.txt", b"x")]), tmp_path / "out")


def test_archives_past_the_bound_are_refused(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", [("zeros", b"\0" * (4 << 20))])
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(ArchiveTooLarge, match="bound"):
        run(bomb, tmp_path / "out", max_bytes=1 << 20)
    many = make_tar(tmp_path / "many.tar", [(f"f{i}", b"") for i in range(20)])
    with pytest.raises(ArchiveTooLarge, match="members"):
        run(many, tmp_path / "out2", max_members=10)


def test_unreadable_archives_are_corrupt(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(ArtifactCorrupt):
        run(fake, tmp_path / "out")
