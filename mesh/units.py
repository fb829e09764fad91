"""Byte sizes as people write them ("512Mi", "2Gi", "1.5 GiB"): the settings' shared type.

A kernel module: every component may import it, and it imports none of them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_bytes(value: object) -> object:
    """Accept 1073741824, "1Gi", "512MiB", "2G", "1.5 GiB"."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", value.lower())
    if not match:
        raise ValueError(f"not a byte size: {value!r} (try 512Mi, 2Gi, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
