"""Regenerate the Python stubs in mesh/gen/ from proto/.

Run through `make proto`, which provides the pinned generator (grpcio-tools 1.64, whose protoc
emits protobuf 5.26 gencode: no runtime-version check, so the stubs run on protobuf 5.26.1
through 6.x, the range tritonclient, kserve and mlserver accept).

The generated modules are rewritten in three mechanical ways, so that they live in one package:
- imports between them name the package (`from mesh.gen import x_pb2`);
- their descriptors go into a private descriptor pool (mesh.gen._pool), not protobuf's default
  pool: tritonclient and the kserve SDK register the same `inference.*` message names there, and
  a process that imports both would fail with "duplicate symbol";
- every file is flattened into mesh/gen/ (kserve/grpc_predict_v2.proto -> grpc_predict_v2_pb2).

Usage: python scripts/gen_proto.py [--out DIR]   (default: mesh/gen)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "mesh.gen"

INIT = '''"""Generated protobuf and gRPC stubs. Do not edit: run `make proto`."""
'''

POOL = '''"""The descriptor pool of mesh's generated stubs. Generated: do not edit.

A private pool keeps mesh's `inference.*` messages apart from those that tritonclient or the
kserve SDK register in protobuf's default pool, so all of them can live in one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # the pinned generator, from `make proto`'s environment

    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    modules = {Path(p).stem for p in protos}
    if len(modules) != len(protos):
        raise SystemExit("two .proto files share a name; they cannot be flattened into one package")
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "__init__.py").write_text(INIT)
        (out / "_pool.py").write_text(POOL)
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            text = _rewrite(src.read_text(), modules)
            dest = out / src.name
            dest.write_text(text)
            written.append(dest)
    return written


def _rewrite(text: str, modules: set[str]) -> str:
    names = "|".join(sorted(modules))
    # `from kserve import grpc_predict_v2_pb2 as ...` -> `from mesh.gen import ...`
    text = re.sub(
        rf"^from [\w.]+ import ({names})_pb2\b", rf"from {PACKAGE} import \1_pb2", text, flags=re.M
    )
    # `_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'kserve.grpc_predict_v2_pb2', ...)`
    text = re.sub(rf"'[\w.]*\.(({names})_pb2)'", rf"'{PACKAGE}.\1'", text)
    if "_descriptor_pool.Default()" in text:
        text = text.replace(
            "# @@protoc_insertion_point(imports)",
            f"from {PACKAGE} import _pool as _mesh_pool\n# @@protoc_insertion_point(imports)",
            1,
        )
        text = text.replace("_descriptor_pool.Default()", "_mesh_pool.POOL")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "mesh" / "gen")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out.parent.parent) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
