"""What a training run decides before any model exists: where it runs, its data, its step plan, fresh/resume/cached.

Split from the trainer so that a cached run (same plan fingerprint as the finished checkpoint) costs only
this: `plan_run` builds no model, optimizer or logger, and the caller reads the summary from the
checkpoint (`trainer.cached_summary`) instead of constructing a trainer that would be half built.
Fingerprints are computed from the same values in the same order as before the split, so an earlier
run is still recognised as cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dspark_data.seeding import derive_seed
from dspark_train.checkpoint import Checkpointer
from dspark_train.data import LoaderConfig, TrainLoader, anchor_span, split_indices
from dspark_train.inputs import TrainInputs, load_inputs
from dspark_train.parallelize import DistInfo, init_distributed
from dspark_train.resume import Decision, decide, plan_dict
from dspark_train.warm_start import InitSource, read_source
from schemas.recipe import Recipe


@dataclass
class RunPlan:
    """One run's decisions; complete on its own (the trainer adds the model on top)."""

    # --- where it runs
    dist: DistInfo
    device: torch.device
    autocast_dtype: torch.dtype | None
    # --- data
    inputs: TrainInputs
    train_indices: list[int]
    val_indices: list[int]
    loader_cfg: LoaderConfig
    loader: TrainLoader
    # --- the step plan and what the checkpoint says about it
    total_steps: int
    plan: dict[str, Any]
    init_source: InitSource | None
    checkpointer: Checkpointer
    latest: Path | None  # the newest checkpoint step directory, if any
    checkpoint_state: dict[str, Any] | None  # its state.json
    decision: Decision

    @property
    def cached(self) -> bool:
        return self.decision.action == "cached"


def plan_run(recipe: Recipe, opts: Any) -> RunPlan:
    """Distributed set-up, determinism, inputs, loader, step count, plan fingerprint and the resume decision.

    `opts` is the trainer's `TrainOptions`. The order matters: rank and world size decide the data
    partition; the torch seed is set before anything draws random numbers; the data's checks refuse
    mismatched layers / hidden size / vocab before any model cost.
    """
    t = recipe.train
    dist = init_distributed(opts.device)
    torch.manual_seed(derive_seed(recipe.seed, "torch"))
    if dist.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    use_bf16 = t.autocast == "bf16" or (t.autocast == "auto" and dist.device.type == "cuda")
    inputs = load_inputs(recipe, data_dir=opts.data_dir, vocab_path=opts.vocab_path, synthetic=opts.synthetic,
                         stream=opts.stream, rank=dist.rank, world_size=dist.world_size,
                         skip_samples=tuple(opts.skip_samples), train_dir=opts.out_dir)
    src = inputs.source
    train_indices, val_indices = split_indices(src.ids, t.val_fraction)
    loader_cfg = LoaderConfig(
        seed=recipe.seed,
        batch_size=t.batch_size,
        max_anchors=t.max_anchors,
        span=anchor_span(recipe.model.block_size, recipe.model.sample_from_anchor),
        aux_slots=inputs.slots.aux,
        last_slot=inputs.slots.last,
        topk=inputs.slots.topk,
        num_workers=t.num_workers,
        prefetch=t.prefetch,
    )
    loader = TrainLoader(src, train_indices, loader_cfg, world_size=dist.world_size, rank=dist.rank)
    # The step plan: epochs of micro-batches grouped into optimizer steps, capped by max_steps.
    max_steps = opts.max_steps if opts.max_steps is not None else t.max_steps
    total_steps = max(1, (t.epochs * loader.batches_per_epoch) // t.grad_accum)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    plan = plan_dict(
        recipe.model_dump(mode="json"),
        data_fp=src.info.fingerprint,
        vocab_fp=inputs.vocab.fingerprint,
        target=inputs.target_fingerprint(),
        world_size=dist.world_size,
    )
    # Warm start: the starting weights change the result, so their hash is part of the plan.
    init_source = read_source(opts.init_from) if opts.init_from else None
    if init_source is not None:
        plan["init_from"] = {k: v for k, v in init_source.record().items() if k != "path"}
    checkpointer = Checkpointer(opts.out_dir, rank=dist.rank, world_size=dist.world_size)
    latest = checkpointer.latest()
    state = checkpointer.read_state(latest) if latest else None
    decision = decide(latest, state, plan=plan, total_steps=total_steps, resume=opts.resume, train_dir=opts.out_dir)
    return RunPlan(
        dist=dist,
        device=dist.device,
        autocast_dtype=torch.bfloat16 if use_bf16 else None,
        inputs=inputs,
        train_indices=train_indices,
        val_indices=val_indices,
        loader_cfg=loader_cfg,
        loader=loader,
        total_steps=total_steps,
        plan=plan,
        init_source=init_source,
        checkpointer=checkpointer,
        latest=latest,
        checkpoint_state=state,
        decision=decision,
    )
