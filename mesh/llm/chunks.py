"""What a generation yields: text chunks and, with the last, the request's figures.

Plain data, no framework: the HTTP routes and the router use it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stats:
    """One finished request's timings, for metrics and `usage`."""

    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    first_token_seconds: float  # submit to first token
    decode_seconds: float  # first token to last


@dataclass(frozen=True, slots=True)
class Chunk:
    """New text of one request. The last chunk has a finish_reason and stats."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None  # "stop", "length" or "cancelled"
    stats: Stats | None = None
