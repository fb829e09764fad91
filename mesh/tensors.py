"""KServe v2 datatypes and tensor signatures, shared by the runtimes and the data plane.

Pure data: no gRPC, no framework. `DATATYPES` maps each v2 datatype that numpy can hold to its
dtype; BF16 has no numpy dtype and is refused by name where it appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest

# v2 datatype -> numpy dtype (little-endian, as the protocol's raw encoding is).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_BY_KIND: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"
}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The v2 datatype of a numpy dtype; strings and objects are BYTES."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise InvalidRequest(f"numpy dtype {dtype} has no KServe v2 datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model: -1 in `shape` marks a dimension of any size.

    >>> TensorSpec("x", "FP32", (-1, 64)).accepts_shape((32, 64))
    True
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> TensorSpec:
        """Parse {"name", "datatype", "shape"} from a model's mesh.json."""
        try:
            name, datatype, shape = raw["name"], raw["datatype"], raw["shape"]
        except (KeyError, TypeError):
            raise InvalidRequest(f"{where}: a tensor needs name, datatype and shape") from None
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}: tensor name must be a non-empty string")
        if datatype not in DATATYPES:
            raise InvalidRequest(f"{where}: tensor {name!r} has unknown datatype {datatype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise InvalidRequest(f"{where}: tensor {name!r} shape must be a list of ints >= -1")
        return cls(name, datatype, tuple(shape))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's inputs and outputs, in the order the model declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise InvalidRequest(f"duplicate {kind} names in model signature: {names}")

    @classmethod
    def of(cls, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec]) -> Signature:
        return cls(tuple(inputs), tuple(outputs))
