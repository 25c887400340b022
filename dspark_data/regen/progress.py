"""Run statistics and regen's progress (prompts done/total, generated tokens/s, errors, ETA)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from dspark_data.progress import Progress


@dataclass
class RunStats:
    """What this invocation did (the dataset totals come from the shards)."""

    samples: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.elapsed


class RegenProgress(Progress):
    """Regen's progress (dspark_data.progress): prompts done/total, generated tokens/s, errors, ETA."""

    def __init__(self, total: int, done: int, stats: RunStats, enabled: bool = True, description: str = "regen"):
        self.stats = stats
        super().__init__(description, total, done=done, enabled=enabled)

    def advance(self, n: int = 1) -> None:
        self.update(advance=n, info=f"{self.stats.tokens_per_s:.1f} tok/s, errors {sum(self.stats.errors.values())}")
