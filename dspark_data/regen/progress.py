"""Run statistics and the rich progress bar (prompts done/total, generated tokens/s, errors, ETA)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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


class RegenProgress:
    """A rich progress bar on stderr; a no-op when disabled (tests, non-interactive use)."""

    def __init__(self, total: int, done: int, stats: RunStats, enabled: bool = True, description: str = "regen"):
        self.stats = stats
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.1f} tok/s"),
                TextColumn("errors {task.fields[errors]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, completed=done, rate=0.0, errors=0)
            self._progress.start()

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task, advance=n, rate=self.stats.tokens_per_s, errors=sum(self.stats.errors.values())
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self) -> RegenProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
