"""Make vLLM's engine processes die with the process that started them, even when it is SIGKILLed.

Used by every engine and server dspark starts: `engine.llm.start_llm` (regen's engine, the capture engine
of dump-hidden and eval, the parity check) and `engine.server.spawn_server` (serve-target's vLLM, the
tests' servers).

Why: vLLM 0.32's `EngineCore` process (and its workers) keep running when their client process is
killed with SIGKILL (seen here: still alive minutes later), holding the engine's memory — on a GPU
machine, the accelerator's. A killed-and-rerun stage would then start a second engine next to the
orphan. The reaper is a tiny separate process (standard library + psutil), started *before* the
engine (a kill during the engine's start-up, most of a short run's time, must not leak it either): it
blocks reading a pipe from the client process; when the pipe closes without a "disarm" message (the
client died), it SIGKILLs
- every process of the client's tree it recorded while the client lived (it looks every 0.5 s; pid and
  start time must match, so a recycled pid is never hit), and their descendants: after the kill the
  orphans are re-parented, so the tree cannot be read any more;
- every process carrying its token in the environment variable `DSPARK_ENGINE_REAPER`, which the client
  sets from `start_reaper()` until `disarm()`/`fire()`: a process spawned since the last look inherits
  it. (Not enough alone: vLLM's `setproctitle("VLLM::EngineCore")` overwrites the environment block
  that /proc shows; a campaign caught exactly that orphan.)
Nothing the client started before `start_reaper()` or after `disarm()` (an earlier test's server, say)
is recorded or carries the token. vLLM's resource tracker is left alone: it exits by itself once the
engine is gone, and cleans up shared memory on the way.
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
import os, select, signal, sys
import psutil
token, client, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# the client's descendants when start_reaper() ran ("pid:create_time,..."): never the engine's. (A start-time
# cut-off is not enough: psutil's create_time has clock-tick resolution, and a process started in the same
# tick as this one would be left out.)
before = {int(p): float(t) for p, t in (e.split(":") for e in sys.argv[4].split(",") if e)}
seen = {}
def snapshot():
    try:
        for proc in psutil.Process(client).children(recursive=True):
            started = proc.create_time()
            if proc.pid == os.getpid() or abs(before.get(proc.pid, -1.0) - started) < 1e-3:
                continue
            seen.setdefault(proc.pid, started)
    except psutil.Error:
        pass
fd, message = sys.stdin.buffer.fileno(), b""
while True:
    if select.select([fd], [], [], interval)[0]:
        chunk = os.read(fd, 64)
        if not chunk:
            break
        message += chunk
    else:
        snapshot()
if message != b"disarm":
    victims = {}
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1e-3:
                victims[pid] = proc
                victims.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.Error:
            pass
    for proc in psutil.process_iter():
        try:
            if proc.pid not in (os.getpid(), client) and proc.environ().get("DSPARK_ENGINE_REAPER") == token:
                victims[proc.pid] = proc
        except psutil.Error:
            pass
    for proc in victims.values():
        try:
            if "resource_tracker" not in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
"""

SNAPSHOT_INTERVAL_S = 0.5  # how often the reaper records the client's process tree

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


def _descendants(psutil) -> str:  # noqa: ANN001 - the psutil module, imported by the caller
    """This process's descendants as "pid:create_time,...": the processes the reaper must spare.

    A child that exits while being listed makes psutil raise; the listing is retried (a few times) rather
    than left empty, since an empty one would let the reaper count those processes as the engine's."""
    for _ in range(5):
        try:
            return ",".join(f"{p.pid}:{p.create_time()!r}" for p in psutil.Process().children(recursive=True))
        except psutil.Error:
            continue
    raise OSError("could not list this process's children")


def start_reaper() -> EngineReaper:
    """Start a reaper for the processes this process starts from now on: call it before the engine starts.

    No-op, with a warning, if that fails.
    """
    try:
        import psutil

        token = f"{os.getpid()}-{secrets.token_hex(8)}"
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        before = _descendants(psutil)
        proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, token, str(os.getpid()), str(SNAPSHOT_INTERVAL_S), before],
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
