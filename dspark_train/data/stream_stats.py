"""One rank's streaming figures, counted from the loader's threads and written at close.

Thread-safe: the stream source and its shared cache count from every loader thread at once.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StreamStats:
    streamed: int = 0
    streamed_tokens: int = 0
    stream_bytes: int = 0
    stream_s: float = 0.0  # summed over threads: wall time requests were out
    cache_hits: int = 0
    peer_waits: int = 0
    peer_wait_s: float = 0.0
    self_streamed_peer: int = 0  # a peer's sample streamed here after peer_wait_s (should stay 0)
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not a field: `figures()` leaves it out

    def add(self, **deltas: float) -> None:
        """Add to counters by name, atomically (several loader threads count at once)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def reject(self, sample_id: str) -> None:
        with self._lock:
            self.rejected.append(sample_id)

    def figures(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (field order)."""
        with self._lock:
            return asdict(self)
