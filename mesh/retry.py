"""Retry policy as data: exponential backoff with jitter, a cap and an optional deadline."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: initial, then times `multiplier`, at most `maximum`, each
    spread by +-`jitter` (a fraction) so that many clients do not retry in step.

    >>> [round(d, 2) for d in Backoff(0.1, 1.0, jitter=0).delays(5)]
    [0.1, 0.2, 0.4, 0.8, 1.0]
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delays(
        self, attempts: int | None = None, rng: random.Random | None = None
    ) -> Iterator[float]:
        rng = rng or random.Random()
        delay = self.initial
        n = 0
        while attempts is None or n < attempts:
            spread = 1 + rng.uniform(-self.jitter, self.jitter) if self.jitter else 1
            yield min(delay, self.maximum) * spread
            delay = min(delay * self.multiplier, self.maximum)
            n += 1

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry number `attempt` (1-based), jittered.

        >>> Backoff(0.1, 1.0, jitter=0).delay(3)
        0.4
        """
        base = min(self.initial * self.multiplier ** max(attempt - 1, 0), self.maximum)
        if not self.jitter:
            return base
        return base * (1 + (rng or random.Random()).uniform(-self.jitter, self.jitter))
