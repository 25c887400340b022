"""Progress that a newcomer sees, whether or not the output is a terminal.

On a terminal: a rich bar (description, bar, done/total, a free-text field, elapsed, ETA). Anywhere else
(CI logs, `make demo | tee`, a log file) rich's live bar prints nothing until the end, so a long stage
looks hung; there a background thread writes one plain line every `interval_s` seconds instead:

    building tiny:trained: 120/600 (20%) loss 4.213, elapsed 31s, ETA 2m04s

The thread also ticks while nothing advances (loading a model, starting an engine), so silence never
lasts longer than the interval (5 s; `DSPARK_PROGRESS_INTERVAL_S` changes it). Used by the tiny-target
build, regen, capture and the trainer.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

DEFAULT_INTERVAL_S = 5.0  # plain lines: often enough to show life, rare enough to keep a CI log readable
INTERVAL_ENV = "DSPARK_PROGRESS_INTERVAL_S"  # overrides it (a quieter log, or a test)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """One unit of long work: `update(advance=..., info=...)` as it goes, `close()` (or `with`) at the end.

    `enabled=False` (tests, `--no-progress`) prints nothing. `console` decides terminal or not
    (`Console.is_terminal`) and where plain lines go (`console.file`); default stderr.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        done: int = 0,
        info: str = "",
        enabled: bool = True,
        console: Console | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.done = done
        self.info = info
        self._start_done = done
        self._started = time.monotonic()
        self._console = console or Console(stderr=True)
        self._bar: RichProgress | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if not enabled:
            return
        if interval_s is None:
            interval_s = float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
        if self._console.is_terminal:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._task = self._bar.add_task(description, total=total, completed=done, info=info)
            self._bar.start()
        else:
            self._thread = threading.Thread(target=self._tick, args=(interval_s,), daemon=True,
                                            name=f"progress:{description}")
            self._thread.start()

    @property
    def is_bar(self) -> bool:
        """True when a live terminal bar shows the info field (else callers may print their own lines)."""
        return self._bar is not None

    def update(self, *, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        """Record work done (`advance` more, or `completed` in all) and the free-text field."""
        with self._lock:
            self.done = completed if completed is not None else self.done + advance
            if info is not None:
                self.info = info
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info=self.info)

    def line(self, *, final: bool = False) -> str:
        """The plain progress line (what a non-terminal sees every interval; `final`: the last one)."""
        with self._lock:
            done, total, info = self.done, self.total, self.info
        elapsed = time.monotonic() - self._started
        parts = [f"{self.description}: {done}" + (f"/{total}" if total else "")]
        if total:
            parts[0] += f" ({100 * done / total:.0f}%)"
        if info:
            parts[0] += f" {info}"
        parts.append(f"{'took' if final else 'elapsed'} {_duration(elapsed)}")
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        if total and rate > 0 and done < total and not final:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        self._console.file.write(text + "\n")
        self._console.file.flush()

    def _tick(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._write(self.line())

    def close(self) -> None:
        """Stop the bar or the ticker (a final plain line says where the work ended)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._write(self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
