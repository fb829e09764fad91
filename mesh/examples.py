"""Small real models made on the spot, for the tests, the benchmark and the demo.

Each builder writes a model in the layout `mesh pod --models` serves (docs/model-layout.md) and
needs its framework (and `onnx` for the ONNX graphs, from the `test` extra). Weights come from a
seeded generator, so a model is the same on every machine; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mesh.tensors import DATATYPES

# v2 datatype -> ONNX TensorProto element type name
_ONNX_TYPES = {
    "BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32",
    "UINT64": "UINT64", "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64",
    "FP16": "FLOAT16", "FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING",
}  # fmt: skip
ALL_DATATYPES = tuple(DATATYPES)


def onnx_mlp(directory: Path, sizes: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> Path:
    """An FP32 MLP (MatMul, Add, Relu) with input "input" [-1, sizes[0]] and output "output"."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["output" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _save_onnx(
        directory, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def onnx_identity(directory: Path, datatypes: Sequence[str] = ALL_DATATYPES) -> Path:
    """One Identity per datatype: input "in_<DT>" [-1] returned as output "out_<DT>"."""
    from onnx import TensorProto, helper

    inputs, outputs, nodes = [], [], []
    for dt in datatypes:
        elem = getattr(TensorProto, _ONNX_TYPES[dt])
        inputs.append(helper.make_tensor_value_info(f"in_{dt}", elem, ["n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{dt}", elem, ["n"]))
        nodes.append(helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    return _save_onnx(
        directory, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )


def _save_onnx(directory: Path, model: Any) -> Path:
    import onnx

    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


def xgboost_booster(
    directory: Path,
    n_features: int = 64,
    n_trees: int = 100,
    depth: int = 6,
    rows: int = 2000,
    seed: int = 0,
    suffix: str = ".ubj",
) -> Path:
    """A binary:logistic booster trained on random data; no mesh.json (the default signature)."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.float32)
    booster = xgb.train(
        {"max_depth": depth, "objective": "binary:logistic", "nthread": 1, "seed": seed},
        xgb.DMatrix(x, label=y),
        num_boost_round=n_trees,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model{suffix}"
    booster.save_model(str(path))
    return path


def _torch_mlp(n_in: int, n_out: int, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_out)
    ).eval()


def torchscript_mlp(directory: Path, n_in: int = 16, n_out: int = 4, seed: int = 0) -> Path:
    """A scripted MLP with mesh.json naming input "x" [-1, n_in] and output "y" [-1, n_out]."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.pt"
    torch.jit.script(_torch_mlp(n_in, n_out, seed)).save(str(path))
    config = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n_in]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, n_out]}],
    }
    (directory / "mesh.json").write_text(json.dumps(config, indent=2))
    return path


def torch_export_mlp(directory: Path, n_in: int = 16, n_out: int = 4, seed: int = 0) -> Path:
    """A torch.export program of an MLP with a dynamic batch dimension; no mesh.json."""
    import torch

    module = _torch_mlp(n_in, n_out, seed)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module, (torch.zeros(2, n_in),), dynamic_shapes=({0: batch},))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.pt2"
    torch.export.save(program, str(path))
    return path
