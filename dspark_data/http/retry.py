"""The backoff schedule every retrying client uses.

Exponential with a cap, so a burst of failures backs off quickly but a long outage is polled at a
steady pace; jittered (x [0.5, 1)) so the retries of many requests that failed together do not arrive
together. An endpoint's pause after failures follows the same schedule, with or without jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_MAX_EXPONENT = 1000  # 2.0**1000 is still a float; any real schedule reaches its cap long before


@dataclass(frozen=True)
class Backoff:
    """Attempt n (1-based) waits min(max_s, initial_s * 2**(n - 1)), times U[0.5, 1) when jittered."""

    initial_s: float
    max_s: float
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (`rng`: a seeded generator where a test needs one)."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), _MAX_EXPONENT))
        if not self.jitter:
            return base
        return base * (0.5 + (rng or random).random() / 2)


def retry_after_s(value: str | None, cap_s: float) -> float | None:
    """A `Retry-After` header in seconds, at most `cap_s`; None when absent or not a number (HTTP dates
    included: the caller then falls back to its backoff)."""
    try:
        return min(cap_s, float(value or ""))
    except ValueError:
        return None
