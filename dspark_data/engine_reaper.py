"""Make vLLM's engine processes die with the process that started them, even when it is SIGKILLed.

Used by every in-process engine dspark starts: regen (`regen/backends/engine.py`) and capture
(`capture/vllm_backend.py`).

Why: vLLM 0.32's `EngineCore` process (and its workers) keep running when their client process is
killed with SIGKILL (seen here: still alive minutes later), holding the engine's memory — on a GPU
machine, the accelerator's. A killed-and-rerun stage would then start a second engine next to the
orphan. The reaper is a tiny separate process (standard library + psutil) started after the engine:
it blocks reading a pipe from the client process; when the pipe closes without a "disarm" message (the
client died), it SIGKILLs the engine processes it was given, matched by pid *and* start time so
a recycled pid is never hit. vLLM's resource tracker is left alone: it exits by itself once the engine
is gone, and cleans up shared memory on the way.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import IO

log = logging.getLogger(__name__)

_REAPER = r"""
import json, os, signal, sys
import psutil
targets = json.loads(sys.argv[1])
message = sys.stdin.buffer.read()
if message != b"disarm":
    for pid, started in targets:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1e-3:
                proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
"""


class EngineReaper:
    """Holds the reaper process; `disarm()` on a normal exit, after the engine was shut down cleanly."""

    def __init__(self, proc: subprocess.Popen[bytes] | None):
        self._proc = proc

    def disarm(self) -> None:
        if self._proc is None:
            return
        stdin: IO[bytes] | None = self._proc.stdin
        try:
            if stdin is not None:
                stdin.write(b"disarm")
                stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._proc = None

    def fire(self) -> None:
        """Kill the engine processes now (the engine did not shut down cleanly)."""
        if self._proc is None:
            return
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._proc = None


def engine_processes() -> list[tuple[int, float]]:
    """(pid, start time) of this process's descendants that belong to the engine (not the resource tracker)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "resource_tracker" in cmd:
                continue
            out.append((child.pid, child.create_time()))
        except psutil.Error:
            continue
    return out


def start_reaper() -> EngineReaper:
    """Start a reaper for the engine processes running now (no-op, with a warning, if that fails)."""
    try:
        targets = engine_processes()
        if not targets:
            return EngineReaper(None)
        proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, json.dumps(targets)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the client's process group must not kill the reaper first
        )
    except (ImportError, OSError) as exc:
        log.warning("could not start the engine reaper (%s); a killed run may leave vLLM processes", exc)
        return EngineReaper(None)
    return EngineReaper(proc)
