"""Promise (issues #5, #8): `dspark train` killed with SIGKILL at any instant and rerun with the same
arguments resumes from its last complete checkpoint and ends with weights bit-identical to an
uninterrupted run's; after every kill, `checkpoints/latest` names a complete checkpoint whose weights
equal the uninterrupted run's at the same step.

A tiny run: 1 draft layer, 12 optimizer steps, a checkpoint every 2 steps and a validation every 4, on
a 40-sample hidden-state dataset written by the real store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reliability import harness
from reliability.data import train_sets, with_sets

pytestmark = pytest.mark.slow
TRIALS = 20
SEED = 5051
STEPS = 12


def _weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dir / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _latest(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    return out / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def test_train_survives_sigkill_at_random_points(tiny_random_target, hidden_data, tmp_path) -> None:
    argv = lambda out: with_sets(  # noqa: E731
        "train", train_sets(tiny_random_target), "--data", str(hidden_data), "--out", str(out),
        "--max-steps", str(STEPS),
    )
    ref = tmp_path / "reference"
    reference_s = harness.run_ok(argv(ref), tmp_path / "reference.log")
    ref_final = _latest(ref)
    assert ref_final is not None and ref_final.name == f"step-{STEPS:06d}"
    ref_steps = {p.name: _weights(p) for p in (ref / "checkpoints").glob("step-*")}
    assert len(ref_steps) == STEPS // 2

    def check_partial(out: Path) -> str:
        latest = _latest(out)
        if latest is None:
            return "killed before the first checkpoint"
        assert (latest / "state.json").is_file(), f"latest names an incomplete checkpoint {latest}"
        assert _same(_weights(latest), ref_steps[latest.name]), f"{latest.name} differs from the reference's"
        return "final checkpoint written" if latest.name == ref_final.name else "resumable checkpoint"

    def check_final(out: Path) -> None:
        import json

        latest = _latest(out)
        assert latest is not None and latest.name == ref_final.name
        assert _same(_weights(latest), ref_steps[latest.name]), "final weights are not bit-identical"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == STEPS

    harness.kill_campaign("train (tiny draft, 12 steps, checkpoint every 2)", argv, tmp_path, reference_s,
                          check_partial, check_final, trials=TRIALS, seed=SEED)
