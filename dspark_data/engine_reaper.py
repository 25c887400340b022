"""Make vLLM's engine processes die with the process that started them, even when it is SIGKILLed.

Used by every in-process engine dspark starts: regen (`regen/backends/engine.py`) and capture
(`capture/vllm_backend.py`).

Why: vLLM 0.32's `EngineCore` process (and its workers) keep running when their client process is
killed with SIGKILL (seen here: still alive minutes later), holding the engine's memory — on a GPU
machine, the accelerator's. A killed-and-rerun stage would then start a second engine next to the
orphan. The reaper is a tiny separate process (standard library + psutil), started *before* the
engine (a kill during the engine's start-up, most of a short run's time, must not leak it either): it
blocks reading a pipe from the client process; when the pipe closes without a "disarm" message (the
client died), it SIGKILLs every process carrying its token in the environment variable
`DSPARK_ENGINE_REAPER`. The client sets it from `start_reaper()` until `disarm()`/`fire()`, so every
engine process and worker inherits it, however late it was spawned and whoever its parent is by then
(orphans are re-parented, so the process tree is no guide after the kill), and nothing started before
or after (a test's vLLM server, say) carries it. vLLM's resource tracker is left alone: it exits by
itself once the engine is gone, and cleans up shared memory on the way.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from typing import IO

log = logging.getLogger(__name__)

_REAPER = r"""
import os, signal, sys
import psutil
token, client = sys.argv[1], int(sys.argv[2])
message = sys.stdin.buffer.read()
if message != b"disarm":
    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in (os.getpid(), client) and proc.environ().get("DSPARK_ENGINE_REAPER") == token:
                victims.append(proc)
        except psutil.Error:
            pass
    for proc in victims:
        try:
            if "resource_tracker" not in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
"""

TOKEN_ENV = "DSPARK_ENGINE_REAPER"


class EngineReaper:
    """Holds the reaper process; `disarm()` on a normal exit, after the engine was shut down cleanly."""

    def __init__(self, proc: subprocess.Popen[bytes] | None, previous_token: str | None = None):
        self._proc = proc
        self._previous = previous_token

    def _release(self, message: bytes) -> None:
        if self._proc is None:
            return
        stdin: IO[bytes] | None = self._proc.stdin
        try:
            if stdin is not None:
                if message:
                    stdin.write(message)
                stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._proc = None
        if self._previous is None:  # processes started from now on are no longer this engine's
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = self._previous

    def disarm(self) -> None:
        """The engine was shut down cleanly: let the reaper exit without killing anything."""
        self._release(b"disarm")

    def fire(self) -> None:
        """Kill the engine processes now (the engine did not shut down cleanly)."""
        self._release(b"")


def start_reaper() -> EngineReaper:
    """Start a reaper for the processes this process starts from now on: call it before the engine starts.

    No-op, with a warning, if that fails.
    """
    try:
        token = f"{os.getpid()}-{secrets.token_hex(8)}"
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, token, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C to the client's process group must not kill the reaper first
        )
    except (ImportError, OSError) as exc:
        log.warning("could not start the engine reaper (%s); a killed run may leave vLLM processes", exc)
        return EngineReaper(None)
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = token
    return EngineReaper(proc, previous)
