"""SIGTERM as a request to stop at the next safe point, shared by `dspark train`, `dump-hidden` and `regen`.

Why not let SIGTERM kill the process: SLURM and Kubernetes send SIGTERM some seconds before SIGKILL so that
a job can save its work. Every stage already survives SIGKILL (atomic commits, resume), but a stage that
is told to stop can do better: the trainer finishes its optimizer step and writes a checkpoint there (no
steps are lost), capture and regen commit what the engine already returned and close their engines (no
orphaned engine processes). Python's default SIGTERM action ends the process at once, so each stage runs
inside `GracefulStop`: the handler only sets a flag, and the stage checks `requested` (or calls `check`,
which raises `StopRequested`) where stopping is safe.

The grace period is the promise to the scheduler: if the stage has not exited `grace_s` seconds after the
signal (a step or checkpoint longer than the scheduler waits), a watchdog prints why and exits with code
143; what was committed before stays valid, since every write is atomic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType

EXIT_TERMINATED = 143  # 128 + SIGTERM: what a shell or scheduler reads as "ended by SIGTERM"
_ACTIVE: list[GracefulStop] = []  # entered contexts, innermost last (what `stop_requested` consults)


class StopRequested(Exception):
    """Raised at a safe point after SIGTERM; the stage's commits before it are complete."""

    def __init__(self, what: str, detail: str = "") -> None:
        self.what, self.detail = what, detail
        super().__init__(f"{what}: stopped on SIGTERM{' - ' + detail if detail else ''}")


class GracefulStop:
    """Context manager: SIGTERM sets `requested` instead of ending the process (main thread only).

    Outside the main thread (a library caller's worker thread) signals cannot be handled; the context then
    does nothing and `requested` stays False, which is the old behaviour.
    """

    def __init__(self, what: str, grace_s: float | None = None, signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        self.what = what
        self.grace_s = grace_s
        self.signals = tuple(signals)
        self.received_at: float | None = None
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def check(self, detail: str = "") -> None:
        """Raise StopRequested if a stop was requested (call only where everything before is committed)."""
        if self.requested:
            raise StopRequested(self.what, detail)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received_at is not None:
            return  # a second SIGTERM changes nothing: the stop is already under way
        self.received_at = time.monotonic()
        name = signal.Signals(signum).name
        grace = f" (within {self.grace_s:g}s)" if self.grace_s else ""
        print(f"{self.what}: {name} received: stopping at the next safe point{grace}", file=sys.stderr, flush=True)
        if self.grace_s:
            self._watchdog = threading.Timer(self.grace_s, self._expired)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _expired(self) -> None:
        print(
            f"{self.what}: the grace period of {self.grace_s:g}s ran out before a clean stop; exiting now. "
            "Everything committed before stays valid and a rerun resumes from it.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_TERMINATED)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def stop_requested() -> bool:
    """Whether a SIGTERM reached the innermost active GracefulStop (False when none is active).

    Lets a loop deep inside a stage (the regen driver, the capture loop) stop at its safe point without the
    context being passed down through every call.
    """
    return bool(_ACTIVE) and _ACTIVE[-1].requested


def check_stop(what: str, detail: str = "") -> None:
    """Raise StopRequested when `stop_requested()`; call it only where everything before is committed."""
    if stop_requested():
        raise StopRequested(what, detail)


def run_forwarding_signals(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run a child (e.g. torchrun) and pass SIGTERM/SIGINT on to it, so it can stop its workers cleanly.

    Without this, `dspark train --nproc-per-node N` killed by SIGTERM would end the launcher and leave
    torchrun and its ranks running unsupervised. Returns the child's exit code.
    """
    child = subprocess.Popen(argv, env=env)
    forwarded = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum)) for sig in forwarded}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
