"""A pool of servers and their health, shared by every client that spreads requests over endpoints.

Why pause an endpoint: a server that refuses connections or fails answers would otherwise take its
share of the work and turn it into failures (or spin a retry loop). After each consecutive failure the
endpoint is paused for the pool's backoff (`retry.Backoff` by failure count), and the first success
clears the pause, so a restarted server takes work again at once. The clients decide what counts as a
failure of the endpoint (as opposed to a bad request) and what to do when none is up.

Thread-safe (the trainer's loader threads share one pool); on an event loop the lock is never contended.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dspark_data.http.retry import Backoff
from dspark_data.http.urls import base_url


@dataclass(eq=False)  # identity: two endpoints with the same URL are still two members of the pool
class Endpoint:
    """One server: its root URL and what the pool knows about its health and load."""

    url: str
    failures: int = 0  # consecutive; 0 once it answers
    down_until: float = 0.0  # time.monotonic() before which it gets no request
    inflight: int = 0  # requests reserved on it by `acquire`

    def is_up(self, now: float) -> bool:
        return self.down_until <= now


class EndpointPool:
    """Endpoints in the order given (URLs normalised by `urls.base_url`), paused by `pause` after failures."""

    def __init__(self, urls: Sequence[str], pause: Backoff):
        self.endpoints = [Endpoint(base_url(u)) for u in urls]
        self.pause = pause
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        return [ep.url for ep in self.endpoints]

    def mark_down(self, ep: Endpoint) -> int:
        """Count a failure and pause `ep` for the backoff of that count; returns the count (1: it just went down)."""
        with self._lock:
            ep.failures += 1
            ep.down_until = time.monotonic() + self.pause.delay(ep.failures)
            return ep.failures

    def mark_up(self, ep: Endpoint) -> bool:
        """`ep` answered: clear its failures and pause; returns whether it had been failing."""
        with self._lock:
            was_down = ep.failures > 0
            ep.failures, ep.down_until = 0, 0.0
            return was_down

    def any_up(self) -> bool:
        now = time.monotonic()
        return any(ep.is_up(now) for ep in self.endpoints)

    def next_up_in(self) -> float:
        """Seconds until the soonest paused endpoint may be tried again (<= 0: one is up now)."""
        return min(ep.down_until for ep in self.endpoints) - time.monotonic()

    def acquire(self) -> Endpoint | None:
        """The up endpoint with the fewest requests out (ties: random), with one more request reserved on it;
        None when every endpoint is paused. Pair with `release`."""
        now = time.monotonic()
        with self._lock:
            up = [ep for ep in self.endpoints if ep.is_up(now)]
            if not up:
                return None
            low = min(ep.inflight for ep in up)
            ep = random.choice([e for e in up if e.inflight == low])
            ep.inflight += 1
            return ep

    def release(self, ep: Endpoint) -> None:
        with self._lock:
            ep.inflight -= 1
