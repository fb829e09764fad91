"""PyTorch models: TorchScript (.pt) and torch.export programs (.pt2), on CPU or CUDA.

A torch.export program carries its inputs' names, dtypes and shapes (symbolic dimensions become
-1); its outputs are named output__0, output__1, ... unless mesh.json names them. TorchScript
carries no usable signature, so a TorchScript model needs `inputs` and `outputs` in mesh.json.
Inference runs under torch.inference_mode.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from mesh.errors import InvalidRequest
from mesh.runtimes.base import LoadRequest, int_option
from mesh.tensors import Signature, TensorSpec

_TORCH_TYPES = {
    "torch.bool": "BOOL",
    "torch.uint8": "UINT8",
    "torch.uint16": "UINT16",
    "torch.uint32": "UINT32",
    "torch.uint64": "UINT64",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.float16": "FP16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
}


class TorchModel:
    def __init__(self, module: Any, signature: Signature, device: str, platform: str) -> None:
        self._module = module
        self.signature = signature
        self.platform = platform
        self._device = device
        self._input_names = [s.name for s in signature.inputs]
        self._output_names = [s.name for s in signature.outputs]

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        import torch

        with warnings.catch_warnings():
            # Request buffers are read-only; the model reads them and never writes.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            args = [torch.from_numpy(inputs[name]).to(self._device) for name in self._input_names]
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[name] for name in self._output_names)
        if len(result) != len(self._output_names):
            raise InvalidRequest(
                f"model returned {len(result)} outputs, its signature declares "
                f"{len(self._output_names)}"
            )
        return {
            name: t.detach().cpu().numpy()
            for name, t in zip(self._output_names, result, strict=True)
            if name in outputs
        }

    def size_hint(self) -> int | None:
        import torch

        total = 0
        for tensor in _tensors_of(self._module):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
        return total or None

    def demote(self) -> _ModuleOnHost | None:
        """On a GPU pod: the module moved to the CPU and kept; the device's cache emptied."""
        import torch

        module, self._module = self._module, None
        if module is None:
            return None
        module = module.to("cpu")
        if self._device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return _ModuleOnHost(module, self.signature, self.platform)

    def close(self) -> None:
        self._module = None
        if self._device != "cpu":
            import gc

            import torch

            # torch's caching allocator keeps freed blocks; without this the device's memory
            # never comes back and the pod's unload check would recycle it.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class _ModuleOnHost:
    """A demoted module on the CPU: `restore` moves it back to the request's device."""

    def __init__(self, module: Any, signature: Signature, platform: str) -> None:
        self._module = module
        self._signature = signature
        self._platform = platform
        self.nbytes = sum(t.numel() * t.element_size() for t in _tensors_of(module))

    def restore(self, request: LoadRequest) -> TorchModel:
        if self._module is None:
            raise RuntimeError("the host copy was already let go")
        device = str(request.device)
        module = self._module.to(device)
        return TorchModel(module, self._signature, device, self._platform)

    def close(self) -> None:
        self._module = None


def _file_or_buffer(request: LoadRequest) -> Any:
    if request.data is not None:
        import io

        return io.BytesIO(request.data)
    return str(request.file)


def _tensors_of(module: Any) -> list[Any]:
    tensors: list[Any] = []
    for attr in ("parameters", "buffers"):
        method = getattr(module, attr, None)
        if callable(method):
            tensors.extend(method())
    return tensors


def _spec_from_fake(name: str, value: Any) -> TensorSpec:
    datatype = _TORCH_TYPES.get(str(value.dtype))
    if datatype is None:
        raise InvalidRequest(f"tensor {name!r} has dtype {value.dtype}, which v2 cannot carry")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, datatype, shape)


class TorchRuntime:
    name: ClassVar[str] = "torch"
    suffixes: ClassVar[tuple[str, ...]] = (".pt2", ".pt", ".pth")
    option_keys: ClassVar[frozenset[str]] = frozenset({"intra_op_threads"})
    size_factor: ClassVar[float] = 1.5
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    # TorchScript and torch.export programs both load from an in-memory buffer.
    accepts_bytes: ClassVar[bool] = True

    def warm_up(self) -> None:
        import importlib

        import torch

        # torch.export.load pulls in its serialiser (and sympy) on first use: ~70 MB.
        for module in ("torch.export", "torch._export.serde.serialize"):
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        with torch.inference_mode():
            torch.nn.Linear(2, 2)(torch.zeros(1, 2))

    def load(self, request: LoadRequest) -> TorchModel:
        import torch

        threads = int_option(request.options, "intra_op_threads", 0, 0)
        if threads:
            # torch's intra-op pool is per process: the last model to ask sets it.
            torch.set_num_threads(threads)
        device = str(request.device)
        if request.file.name.endswith(".pt2"):
            return self._load_exported(request, device)
        if request.config.inputs is None or request.config.outputs is None:
            raise InvalidRequest(
                "a TorchScript model needs 'inputs' and 'outputs' in mesh.json beside it"
            )
        module = torch.jit.load(_file_or_buffer(request), map_location=device)  # type: ignore[no-untyped-call]
        module.eval()
        signature = Signature.of(request.config.inputs, request.config.outputs)
        return TorchModel(module, signature, device, "pytorch_torchscript")

    def _load_exported(self, request: LoadRequest, device: str) -> TorchModel:
        import torch

        program = torch.export.load(_file_or_buffer(request))
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        user_inputs = list(program.graph_signature.user_inputs)
        inputs = request.config.inputs or tuple(
            _spec_from_fake(str(name), placeholders[str(name)].meta["val"]) for name in user_inputs
        )
        outputs = request.config.outputs
        if outputs is None:
            output_node = next(n for n in program.graph.nodes if n.op == "output")
            values = output_node.meta.get("val")
            if values is None:
                raise InvalidRequest(
                    "exported program has no output metadata; name outputs in mesh.json"
                )
            values = values if isinstance(values, list | tuple) else [values]
            user_outputs = values[-len(program.graph_signature.user_outputs) :]
            outputs = tuple(_spec_from_fake(f"output__{i}", v) for i, v in enumerate(user_outputs))
        module = program.module()
        if device != "cpu":
            module = module.to(device)
        return TorchModel(module, Signature.of(inputs, outputs), device, "pytorch_export")
