"""ONNX models on onnxruntime: the CUDA provider on a GPU pod where it is available, else CPU.

Threads are kept small by default (intra-op 1, no spinning): a dense pod holds many sessions,
and onnxruntime's defaults start a thread per core for each one (20 default sessions started 24
threads on a 2-core machine), which then spin and compete with the inference pool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from mesh.errors import InvalidRequest
from mesh.runtimes.base import LoadRequest, int_option
from mesh.tensors import Signature, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(node: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        raise InvalidRequest(f"tensor {node.name!r} has type {node.type}, which v2 cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, datatype, shape)


class OnnxModel:
    platform = "onnxruntime_onnx"

    def __init__(self, session: Any, signature: Signature) -> None:
        self._session = session
        self.signature = signature
        self._bytes_inputs = {s.name for s in signature.inputs if s.datatype == "BYTES"}

    def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray[Any, Any]]:
        feed: dict[str, np.ndarray[Any, Any]] = dict(inputs)
        for name in self._bytes_inputs:
            feed[name] = _to_strings(name, feed[name])
        results = self._session.run(list(outputs), feed)
        return dict(zip(outputs, results, strict=True))

    def size_hint(self) -> int | None:
        return None

    def close(self) -> None:
        self._session = None


def _to_strings(name: str, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ONNX string tensors hold UTF-8 text; v2 BYTES arrive as bytes."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        try:
            flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"input {name!r}: element {i} is not UTF-8, and ONNX string tensors hold text"
            ) from None
    return out


# A one-node Identity graph (FP32 [1]), for warm-up: 65 bytes, made with onnx.helper.
_TINY_MODEL = (
    b'\x08\x08:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01wZ\x0f\n\x01x\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


class OnnxRuntime:
    name: ClassVar[str] = "onnx"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    option_keys: ClassVar[frozenset[str]] = frozenset({"intra_op_threads", "inter_op_threads"})
    size_factor: ClassVar[float] = 2.0
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    # Sessions are re-created from the file's bytes kept in the host tier (on the CUDA provider
    # on a GPU pod): destroying a session frees its CUDA arena, so a demotion gives it back.
    accepts_bytes: ClassVar[bool] = True

    def warm_up(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(_TINY_MODEL, options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.zeros(1, np.float32)})

    def load(self, request: LoadRequest) -> OnnxModel:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int_option(request.options, "intra_op_threads", 1, 1)
        options.inter_op_num_threads = int_option(request.options, "inter_op_threads", 1, 1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if request.device.is_cuda:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                # Grow the CUDA arena by what is asked, not in doubling chunks: what the device
                # shows is then what the model holds, and an unload gives back all of it.
                cuda = {
                    "device_id": request.device.index,
                    "arena_extend_strategy": "kSameAsRequested",
                }
                providers.insert(0, ("CUDAExecutionProvider", cuda))
            else:
                log.warning(
                    "model %s: pod runs on %s but onnxruntime has no CUDA provider; using CPU",
                    request.model_id,
                    request.device,
                )
        model: str | bytes = request.data if request.data is not None else str(request.file)
        session = ort.InferenceSession(model, options, providers=providers)
        inputs = request.config.inputs or tuple(_spec(n) for n in session.get_inputs())
        outputs = request.config.outputs or tuple(_spec(n) for n in session.get_outputs())
        return OnnxModel(session, Signature.of(inputs, outputs))
