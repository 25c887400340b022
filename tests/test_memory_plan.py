"""The memory planner (`dspark train --dry-run`) against a measured CPU step, and its CLI report.

Measured peak: the real trainer runs one warm-up step, then a second `train_step` under
`torch.profiler.profile(profile_memory=True)`. The profiler records every CPU allocator event of the
step with its signed size; the running sum of those, in time order, is the live tensor bytes the step
adds, and its maximum plus the bytes already resident (parameters, buffers, AdamW moments, the loss's
target head: counted from the live tensors' storages) is the step's peak. The loader runs with
`num_workers=0`, so the batch is built inside the profiled step as the planner assumes.
The planned peak is the planner's figure for the same draft and the same batch shape (B, T, A).
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dspark_train.memory_plan import StepShape, fmt_bytes, make_plan, parse_bytes
from dspark_train.trainer import Trainer, TrainOptions
from schemas.loading import load_recipe

LARGER = ["seq_len=1024", "model.num_layers=3", "model.intermediate_size=1024", "model.markov_rank=128",
          "train.batch_size=2", "train.max_anchors=256"]


def _resident_bytes(trainer: Trainer) -> int:
    tensors = list(trainer.model.parameters()) + list(trainer.model.buffers())
    tensors += [x for s in trainer.optimizer.state.values() for x in s.values() if isinstance(x, torch.Tensor)]
    tensors += [trainer.head.lm_head, trainer.head.norm, trainer.head.embed]
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


class _ShapeRecorder:
    """Wraps the train loader to remember the shape of the batch the step consumed."""

    def __init__(self, loader) -> None:  # noqa: ANN001
        self.loader, self.shape = loader, None

    def __next__(self):  # noqa: ANN204
        batch = next(self.loader)
        self.shape = StepShape(*batch.input_ids.shape, batch.anchors.shape[1])
        return batch

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.loader, name)


def _measure(tmp_path, sets: list[str]) -> tuple[int, Trainer, StepShape]:
    from torch.profiler import ProfilerActivity, profile

    recipe = load_recipe("tiny", ["target.model=tiny:random", "train.num_workers=0", *sets])
    deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = Trainer(recipe, TrainOptions(out_dir=tmp_path / "train", synthetic=16, device="cpu", progress=False))
    try:
        trainer.model.train()
        trainer.train_step()  # warm-up: AdamW moments exist from here on, as in every later step
        trainer.loader = _ShapeRecorder(trainer.loader)
        resident = _resident_bytes(trainer)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.train_step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        return resident + peak, trainer, trainer.loader.shape
    finally:
        trainer.loader.close()
        torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("sets", [[], LARGER], ids=["tiny", "larger"])
def test_planned_peak_within_25_percent_of_measured(tmp_path, tiny_random_target, sets):
    measured, trainer, shape = _measure(tmp_path, sets)
    plan = make_plan(trainer.draft_config, shape, loss=trainer.loss_fn, world_size=1, gpu=False,
                     frozen_dtype=torch.float32)
    planned = plan.peaks["1 GPU"]
    ratio = planned / measured
    print(f"{sets or 'tiny'}: shape {shape}, planned {fmt_bytes(planned)}, measured {fmt_bytes(measured)}, "
          f"ratio {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25, (planned, measured)
    # the plan's parts add up and name what dominates
    assert plan.trace.activations > 0 and plan.per_sample["attention"] > 0 and plan.per_sample["mlp"] > 0
    assert plan.trace.params == sum(p.numel() * 4 for p in trainer.model.parameters())


def test_parse_bytes_and_limits():
    assert parse_bytes("141GB") == 141 * 10**9 and parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("288 GB") == 288 * 10**9
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_bytes("lots")


def test_dry_run_cli_seed_shape_fits_and_limits(tmp_path, tiny_random_target):
    """`dspark train --dry-run` on the tiny recipe: no training directory is written, the table is printed,
    and a device too small for the step says NO with a largest batch of 0."""
    from cli.main import app

    out = tmp_path / "train"
    args = ["train", "--recipe", "tiny", "--set", "target.model=tiny:random", "--out", str(out), "--dry-run",
            "--nproc-per-node", "2"]
    result = CliRunner().invoke(app, args + ["--gpu-memory", "80GB"])
    assert result.exit_code == 0, result.output
    assert "planned peak" in result.output and "FSDP2" in result.output and "DDP" in result.output
    assert "yes" in result.output and not out.exists()
    small = CliRunner().invoke(app, args + ["--gpu-memory", "3.05GB"])  # 3 GB reserve leaves 50 MB
    assert small.exit_code == 0, small.output
    assert "NO" in small.output
