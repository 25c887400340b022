"""Shared fixtures. vLLM on CPU: give it both cores and a small KV cache (the engines' own defaults, set for
the whole session so that every process a test starts has them)."""

from __future__ import annotations

import os

from dspark_data.engine.cpu import CPU_DEFAULTS

for _key, _value in CPU_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# --- tiny targets (dspark_data/targets): built once per cache, shared by every test session ---
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_random_target() -> str:
    """Local dir of `tiny:random` (random-init 6-layer Llama, GLM-style tokenizer); seconds to build."""
    from dspark_data.targets import resolve_target

    return resolve_target("tiny:random")


@pytest.fixture(scope="session")
def tiny_trained_target() -> str:
    """Local dir of `tiny:trained` (same architecture, trained ~3 min on chat-formatted stdlib text)."""
    from dspark_data.targets import resolve_target

    return resolve_target("tiny:trained")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch) -> None:
    """Every test runs with a fresh, empty working directory: a `runs/` folder left in the checkout (by
    `make demo`) must not be seen by any test, and no test may write into the checkout by default."""
    monkeypatch.chdir(tmp_path)
