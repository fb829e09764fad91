"""Sampling parameters, validated once at the edge of every protocol (OpenAI, v2, gRPC).

Each protocol spells them its own way; all of them end here, so a bad value gets the same
InvalidRequest (HTTP 400, gRPC INVALID_ARGUMENT) and message whichever way it came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 16
MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 256


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token. temperature 0 is greedy decoding.

    >>> SamplingParams.parse({"max_tokens": 8, "temperature": 0}).greedy
    True
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SamplingParams:
        """From a JSON-like mapping; unknown keys are ignored (each protocol has its own)."""
        max_tokens = _int(raw, "max_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, got {max_tokens}")
        temperature = _float(raw, "temperature", 1.0)
        if temperature < 0:
            raise InvalidRequest(f"temperature must be at least 0, got {temperature:g}")
        top_p = _float(raw, "top_p", 1.0)
        if not 0 < top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p:g}")
        top_k = _int(raw, "top_k", 0)
        if top_k < 0 and top_k != -1:  # -1 is vLLM's and Triton's spelling of "no cut"
            raise InvalidRequest(f"top_k must be at least 0, got {top_k}")
        seed = raw.get("seed")
        if seed is not None:
            seed = _int(raw, "seed", 0)
        stop = raw.get("stop")
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            raise InvalidRequest("stop must be a string or a list of strings")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
            raise InvalidRequest(f"stop sequences must be 1 to {MAX_STOP_LENGTH} characters")
        ignore_eos = raw.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise InvalidRequest("ignore_eos must be a boolean")
        return cls(max_tokens, temperature, top_p, max(top_k, 0), seed, stops, ignore_eos)


def _int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise InvalidRequest(f"{key} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, got {value!r}")
    return value


def _float(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise InvalidRequest(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidRequest(f"{key} must be a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{key} must be a finite number, got {value!r}")
    return float(value)
