"""The committed stubs: fresh, wire-compatible with the public v2 protocol, on protobuf 5 and 6."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import google.protobuf
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_PYTHON = ROOT / ".venv-proto" / "bin" / "python"


def _generator() -> Path:
    if not PROTO_PYTHON.exists():
        pytest.fail(f"{PROTO_PYTHON} is missing: `make proto-env` (run by `make test`) creates it")
    return PROTO_PYTHON


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "mesh" / "gen"
    subprocess.run(
        [str(_generator()), str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "mesh" / "gen"
    fresh = sorted(p.name for p in out.iterdir() if p.is_file())
    assert fresh == sorted(
        p.name for p in committed.iterdir() if p.is_file() and p.suffix != ".pyc"
    )
    _, mismatch, errors = filecmp.cmpfiles(out, committed, fresh, shallow=False)
    assert (mismatch, errors) == ([], []), "stubs are stale: run `make proto` and commit"


def test_stubs_run_on_protobuf_5(tmp_path: Path) -> None:
    """The generator's environment has protobuf 5.x; the test environment has 6.x."""
    script = (
        "import google.protobuf as g; assert g.__version__.startswith('5.'), g.__version__\n"
        "from mesh.gen import grpc_predict_v2_pb2 as pb, runtime_pb2 as rpb\n"
        "r = pb.ModelInferRequest(model_name='m', raw_input_contents=[b'x'])\n"
        "r.inputs.add(name='a', datatype='FP32', shape=[1])\n"
        "assert pb.ModelInferRequest.FromString(r.SerializeToString()) == r\n"
        "assert rpb.LoadModelRequest(model_id='m').model_id == 'm'\n"
        "print(g.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(_generator()), "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert google.protobuf.__version__.startswith("6."), "the test environment should be on 6.x"


def test_wire_compatible_with_tritonclients_definition() -> None:
    """Our messages and tritonclient's (the same public protocol) read each other's bytes."""
    from tritonclient.grpc import service_pb2 as triton

    from mesh.gen import grpc_predict_v2_pb2 as pb

    ours = pb.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    ours.parameters["priority"].int64_param = 3
    tensor = ours.inputs.add(name="x", datatype="INT32", shape=[2, 2])
    tensor.parameters["p"].string_param = "v"
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    ours.outputs.add(name="y").parameters["q"].bool_param = True
    ours.raw_input_contents.append(b"\x01\x02")
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m"
    assert theirs.id == "req-1"
    assert theirs.parameters["priority"].int64_param == 3
    assert list(theirs.inputs[0].contents.int_contents) == [1, 2, 3, 4]
    assert theirs.inputs[0].parameters["p"].string_param == "v"
    assert theirs.outputs[0].parameters["q"].bool_param
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(
        deterministic=True
    )
    for name in ("ModelInferResponse", "ModelMetadataResponse", "ServerMetadataResponse"):
        a = getattr(pb, name).DESCRIPTOR
        b = getattr(triton, name).DESCRIPTOR
        assert [(f.name, f.number, f.type) for f in a.fields] == [
            (f.name, f.number, f.type) for f in b.fields
        ], name
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"


def test_stub_modules_import_without_the_default_pool_clash() -> None:
    """Importing tritonclient after mesh's stubs (and the reverse) raises nothing."""
    code = "import mesh.gen.grpc_predict_v2_pb2, tritonclient.grpc.service_pb2; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
