"""The DSpark trainer: one class that owns the run, built in dependency order, and a loop that fits a screen.

    python -m dspark_train --recipe tiny                       # one process (CPU or one GPU)
    torchrun --nproc-per-node 8 -m dspark_train --recipe R     # DDP over 8 GPUs (gloo on CPU)
    dspark train --recipe R --nproc-per-node 8                 # the same, torchrun launched for you

Guarantees (tested on CPU): two runs with the same seed and data end bit-identical; a run interrupted at
any step and resumed from its last checkpoint ends bit-identical to an uninterrupted one. See
docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from torch import nn

from dspark_data.seeding import derive_seed
from dspark_data.shutdown import GracefulStop
from dspark_data.store.files import atomic_write_bytes
from dspark_data.targets.weights import TargetHead, target_probs_and_greedy
from dspark_train.checkpoint import Checkpointer
from dspark_train.data import Batch, LoaderConfig, TrainLoader, anchor_span, eval_loader, split_indices
from dspark_train.inputs import TrainInputs, load_head, load_inputs
from dspark_train.logging_utils import TrainLogger, summary_figures
from dspark_train.losses import DSparkLoss, slot_targets, slot_targets_topk
from dspark_train.metrics import DraftMetrics
from dspark_train.model.config import DraftConfig
from dspark_train.model.draft import DSparkDraft
from dspark_train.parallelize import DistInfo, all_reduce_sum, init_distributed, parallelize
from dspark_train.preempt import PREEMPTED_MESSAGE, agree_to_stop, gather_window, restore_window
from dspark_train.resume import Decision, decide, differences, plan_dict, plan_fingerprint
from dspark_train.schedule import LRSchedule, ScheduleConfig
from dspark_train.trackers import open_trackers
from dspark_train.warm_start import InitSource, load_into, read_source
from schemas.recipe import Recipe


@dataclass
class TrainOptions:
    """Run-time choices that are not part of the recipe (where things are, how to run)."""

    out_dir: Path  # the train directory: checkpoints/, metrics.jsonl, summary.json
    data_dir: Path | None = None  # hidden-state dataset (dspark dump-hidden)
    vocab_path: Path | None = None  # vocab.safetensors (dspark vocab); None: full target vocab
    max_steps: int | None = None  # overrides recipe train.max_steps
    resume: bool = False  # continue the checkpoint in out_dir even if the plan changed
    device: str | None = None  # "cpu" / "cuda"; None: CUDA when available
    attention: str | None = None  # "sdpa" / "flex"; None: flex on GPU, sdpa on CPU
    synthetic: int | None = None  # train on N synthetic samples instead of data_dir (bench, smoke tests)
    stream: Any = None  # data.stream_options.StreamOptions: stream from `dspark serve-target` (data_dir = regen)
    stop_after: int | None = None  # tests: stop after this step as if killed (no final checkpoint)
    progress: bool = True  # rich progress bar when the console is a terminal
    skip_samples: tuple[str, ...] = ()  # sample ids to leave out (damaged ones that `dspark verify` named)
    init_from: Path | None = None  # start from this speculators-format draft (warm_start.py), fresh optimizer


class Trainer:
    # --- what to do
    recipe: Recipe
    opts: TrainOptions
    decision: Decision
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
    # --- model, frozen target head, loss
    draft_config: DraftConfig
    model: DSparkDraft  # the module itself (checkpoints, validation)
    wrapped: nn.Module  # what the training step calls (DDP / FSDP2 / the model)
    head: TargetHead | None  # None with top-K targets: no final norm / lm_head matmul at all
    loss_fn: DSparkLoss
    # --- optimisation
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    total_steps: int
    # --- bookkeeping
    checkpointer: Checkpointer
    logger: TrainLogger
    plan: dict[str, Any]
    step: int
    tokens_seen: int
    untrained_val: dict[str, float] | None
    last_val: dict[str, float] | None
    notes: list[str]  # resume decisions worth printing once the logger exists

    def __init__(self, recipe: Recipe, opts: TrainOptions, stop: GracefulStop | None = None) -> None:
        """`stop`: the caller's entered GracefulStop (train.run); SIGTERM then ends the loop at a step boundary
        with a checkpoint. Without one (a library caller) SIGTERM keeps its default action."""
        self.recipe, self.opts = recipe, opts
        self.stop = stop or GracefulStop("dspark train")  # not entered: never requested
        t = recipe.train
        # Distributed first: rank and world size decide the data partition and who writes files.
        self.dist = init_distributed(opts.device)
        self.device = self.dist.device
        # Determinism before anything draws random numbers: same seed -> same init on every rank and run.
        torch.manual_seed(derive_seed(recipe.seed, "torch"))
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        use_bf16 = t.autocast == "bf16" or (t.autocast == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        # Data before the model: its checks refuse mismatched layers/hidden size/vocab before any cost.
        self.inputs = load_inputs(recipe, data_dir=opts.data_dir, vocab_path=opts.vocab_path, synthetic=opts.synthetic,
                                  stream=opts.stream, rank=self.dist.rank, world_size=self.dist.world_size,
                                  skip_samples=tuple(opts.skip_samples), train_dir=opts.out_dir)
        src = self.inputs.source
        self.train_indices, self.val_indices = split_indices(src.ids, t.val_fraction)
        self.loader_cfg = LoaderConfig(
            seed=recipe.seed,
            batch_size=t.batch_size,
            max_anchors=t.max_anchors,
            span=anchor_span(recipe.model.block_size, recipe.model.sample_from_anchor),
            aux_slots=self.inputs.slots.aux,
            last_slot=self.inputs.slots.last,
            topk=self.inputs.slots.topk,
            num_workers=t.num_workers,
            prefetch=t.prefetch,
        )
        self.loader = TrainLoader(
            src, self.train_indices, self.loader_cfg, world_size=self.dist.world_size, rank=self.dist.rank
        )
        # The step plan: epochs of micro-batches grouped into optimizer steps, capped by max_steps.
        max_steps = opts.max_steps if opts.max_steps is not None else t.max_steps
        self.total_steps = max(1, (t.epochs * self.loader.batches_per_epoch) // t.grad_accum)
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)
        # Fingerprints decide fresh / resume / cached before the model is built (a cached run costs nothing).
        self.plan = plan_dict(
            recipe.model_dump(mode="json"),
            data_fp=src.info.fingerprint,
            vocab_fp=self.inputs.vocab.fingerprint,
            target=self.inputs.target_fingerprint(),
            world_size=self.dist.world_size,
        )
        # Warm start: the starting weights change the result, so their hash is part of the plan.
        self.init_source: InitSource | None = read_source(opts.init_from) if opts.init_from else None
        if self.init_source is not None:
            self.plan["init_from"] = {k: v for k, v in self.init_source.record().items() if k != "path"}
        self.checkpointer = Checkpointer(opts.out_dir, rank=self.dist.rank, world_size=self.dist.world_size)
        latest = self.checkpointer.latest()
        state = self.checkpointer.read_state(latest) if latest else None
        self.decision = decide(
            latest, state, plan=self.plan, total_steps=self.total_steps, resume=opts.resume, train_dir=opts.out_dir
        )
        self.step, self.tokens_seen = 0, 0
        self.untrained_val = self.last_val = None
        self.notes = [check.message for check in self.inputs.checks]
        self._open_window: list[dict[str, Any]] | None = None
        self._resumed_window: tuple[dict[str, torch.Tensor], int] = ({}, 0)
        self.preempted = False
        self._checkpoint_state = state
        if self.decision.action == "cached":
            return
        # The model: architecture from the checkpoint on resume, else from recipe + target; fp32 masters.
        if self.decision.action == "resume" and state is not None:
            self.draft_config = DraftConfig.from_dict(state["draft_config"])
        else:
            self.draft_config = DraftConfig.from_recipe(recipe, self.inputs.target_info)
        head = load_head(self.inputs.target_dir, self.device, recipe.target.revision)
        # Built on CPU (its RNG is the seeded one on every device), then moved.
        self.model = DSparkDraft(self.draft_config, head.embed, head.lm_head, self.inputs.vocab.t2d).to(self.device)
        if self.init_source is not None and self.decision.action == "fresh":  # on resume the checkpoint wins
            self.notes += load_into(self.model, self.init_source, self.draft_config, recipe.capture.aux_layers,
                                    self.model.t2d)
            self.notes.append(f"initialised from {self.init_source.path} ({self.init_source.fmt}, weights sha256 "
                              f"{self.init_source.sha256[:12]}); optimizer and lr schedule start fresh")
        # Target head for the loss targets: final norm + lm_head only (drop the embedding: the draft has it).
        # With top-K targets nothing of it is kept: the full lm_head is freed once the draft took its t2d rows.
        self.head = dataclasses.replace(head, embed=head.lm_head) if self.inputs.slots.last is not None else None
        del head
        self.loss_fn = DSparkLoss.from_config(recipe.loss)
        # Parallelism wraps the single-device model in one place (DDP, or FSDP2 with train.fsdp).
        self.wrapped = parallelize(self.model, self.dist, fsdp=t.fsdp)
        # Optimizer over the trainable parameters only (frozen target tensors are buffers).
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=t.lr,
            betas=tuple(t.betas),
            weight_decay=t.weight_decay,
        )
        self.schedule = LRSchedule(self.optimizer, ScheduleConfig.from_train(t, self.total_steps))
        # Restore last: everything it overwrites now exists.
        if self.decision.action == "resume" and latest is not None:
            self._restore(latest)
        self.logger = TrainLogger(
            opts.out_dir,
            enabled=self.dist.is_main,
            total_steps=self.total_steps,
            start_step=self.step,
            trackers=open_trackers(
                t.report_to, opts.out_dir, run_name=f"{recipe.name}-{plan_fingerprint(self.plan)[:8]}",
                fingerprint=plan_fingerprint(self.plan), config=recipe.model_dump(mode="json"),
                start_step=self.step, warn=lambda m: self.notes.append(escape(m)),  # "[wandb]" is no markup
            ) if self.dist.is_main else [],
            progress=opts.progress,
        )
        self.logger.message(f"[bold]{self.decision.message}[/bold] ({self._describe()})")
        for check in self.inputs.checks:  # the run is accepted: a resume may now skip the re-hash
            check.remember()
        captured_from = self.inputs.source.info.target
        if captured_from and captured_from != recipe.target.model:
            self.notes.append(f"the data was captured from target {captured_from!r}, the recipe names "
                              f"{recipe.target.model!r}: same shapes, but make sure it is the same model")
        for note in self.notes + self.draft_config.notes:
            self.logger.message(f"note: {note}")

    # ------------------------------------------------------------------ setup helpers
    def _describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return (
            f"{len(self.train_indices)} train / {len(self.val_indices)} val samples from {self.inputs.data_where}, "
            f"{self.loader.batches_per_epoch} micro-batches per epoch per rank, {self.total_steps} steps, "
            f"{n_params / 1e6:.2f}M trainable parameters, world size {self.dist.world_size}, {self.device}"
        )

    def _restore(self, path: Path) -> None:
        state = self.checkpointer.load(path, model=self.model, optimizer=self.optimizer)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.untrained_val, self.last_val = state.get("untrained_val"), state.get("last_val")
        self._resumed_window = restore_window(state.get("window"), self.dist.rank)
        self.schedule.load_state_dict(state["schedule"])
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            self.notes.append(f"lr schedule recomputed for {self.total_steps} steps (was {state['total_steps']})")
        if state.get("plan_fingerprint") != plan_fingerprint(self.plan):
            self.notes.append("--resume with changed settings: " + "; ".join(differences(state["plan"], self.plan)))
        try:
            self.loader.load_state_dict(state["loader"])
        except ValueError:  # another batch plan (--resume with changed settings): restart that epoch
            self.notes.append("the loader position does not fit the new batch plan: restarting its epoch")
            self.loader.load_state_dict({"epoch": int(state["loader"]["epoch"]), "position": 0})

    def _state(self, final: bool) -> dict[str, Any]:
        return {
            "final": final,
            "total_steps": self.total_steps,
            "tokens_seen": self.tokens_seen,
            "loader": self.loader.state_dict(),
            "schedule": self.schedule.state_dict(),
            "plan": self.plan,
            "plan_fingerprint": plan_fingerprint(self.plan),
            "draft_config": self.draft_config.to_dict(),
            "data_fingerprint": self.inputs.source.info.fingerprint,
            "vocab_fingerprint": self.inputs.vocab.fingerprint,
            "target_dir": self.inputs.target_dir,
            "untrained_val": self.untrained_val,
            "last_val": self.last_val,
            "window": self._open_window,  # every rank's log sums since the last train record (preempt.py)
            "init_from": self.init_source.record() if self.init_source is not None else None,
        }

    def save(self, final: bool = False) -> Path:
        return self.checkpointer.save(
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            state=self._state(final),
            recipe=self.recipe.model_dump(mode="json"),
        )

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _attention(self) -> str:
        return self.opts.attention or ("flex" if self.device.type == "cuda" else "sdpa")

    def forward(self, module: nn.Module, batch: Batch) -> tuple[Any, Any]:
        """Draft outputs and the per-slot targets (from the stored last layer, or from the stored top-K)."""
        with self._autocast():
            out = module(
                batch.context_hidden, batch.input_ids, batch.anchors, batch.anchor_valid, attention=self._attention()
            )
        if self.head is None:
            targets = slot_targets_topk(out, batch.input_ids, batch.loss_mask, batch.topk_ids, batch.topk_probs,
                                        batch.topk_tail, self.model.t2d)
            return out, targets
        with torch.no_grad():
            next_probs, next_greedy = target_probs_and_greedy(batch.target_hidden, self.head, self.model.t2d)
        targets = slot_targets(out, batch.input_ids, batch.loss_mask, next_probs, self.model.t2d, next_greedy)
        return out, targets

    def _sync_context(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
        if hasattr(self.wrapped, "no_sync") and not sync:
            return self.wrapped.no_sync()
        if hasattr(self.wrapped, "set_requires_gradient_sync"):
            self.wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, torch.Tensor]:
        """lr -> micro-batches (sync on the last) -> clip -> step -> zero_grad. Returns detached figures."""
        lr = self.schedule.apply()
        accum = self.recipe.train.grad_accum
        sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro in range(accum):
            batch = next(self.loader).to(self.device, non_blocking=True)
            tokens += batch.num_tokens
            with self._sync_context(micro == accum - 1):
                out, targets = self.forward(self.wrapped, batch)
                losses = self.loss_fn(out.logits, targets, out.confidence_logits)
                (losses["loss"] / accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
        clip = self.recipe.train.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        sums["grad_norm"] = grad_norm.detach().float()
        sums["lr"] = torch.tensor(lr)
        sums["tokens"] = torch.tensor(float(tokens))
        return sums

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The seed card's metrics on the held-out split, summed over ranks."""
        self.model.eval()
        metrics = DraftMetrics(self.draft_config.num_draft_tokens, device=self.device)
        loader = eval_loader(
            self.inputs.source,
            self.val_indices,
            self.loader_cfg,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
        )
        try:
            for batch in loader:
                batch = batch.to(self.device, non_blocking=True)
                out, targets = self.forward(self.model, batch)  # FSDP: the sharded module; DDP: unwrapped
                metrics.update(out.logits, targets, out.confidence_logits)
        finally:
            loader.close()
        metrics.all_reduce()
        self.model.train()
        return metrics.compute()

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        """Run (or reuse) the plan; returns the summary written to summary.json."""
        if self.decision.action == "cached":
            return self._write_summary(cached=True)
        t = self.recipe.train
        if self.step == 0 and self.val_indices:
            self.untrained_val = self.validate()  # the untrained draft's figures: the bar training must clear
            self.logger.val(0, self.untrained_val, self.draft_config.num_draft_tokens)
        running, open_steps = self._resumed_window
        window = {"start": time.perf_counter(), "wait": self.loader.wait_s, "steps": open_steps}
        pending_tokens = 0.0
        self.train_seconds, wait_total, start = 0.0, 0.0, time.perf_counter()
        self.model.train()
        try:
            while self.step < self.total_steps:
                figures = self.train_step()
                pending_tokens += float(figures.pop("tokens"))
                for k, v in figures.items():
                    running[k] = running.get(k, 0.0) + v
                window["steps"] += 1
                last = self.step == self.total_steps
                if self.step % t.log_every == 0 or last:
                    pending_tokens = self._log_window(window, running, pending_tokens)
                    running = {}
                if (self.step % t.val_every == 0 or last) and self.val_indices:
                    self.last_val = self.validate()
                    self.logger.val(self.step, self.last_val, self.draft_config.num_draft_tokens)
                preempt = agree_to_stop(self.stop.requested, self.device) and not last  # every rank, same step
                if self.step % t.save_every == 0 or last or preempt:
                    self.tokens_seen += int(all_reduce_sum(torch.tensor([pending_tokens]))[0])
                    pending_tokens = 0.0
                    self._open_window = gather_window(running, int(window["steps"]), self.device)
                    saved = self.save(final=last)
                self.logger.advance(self.step)
                if preempt:
                    self.preempted = True
                    self.logger.message(PREEMPTED_MESSAGE.format(step=self.step, total=self.total_steps,
                                                                 checkpoint=saved))
                    break
                if self.opts.stop_after is not None and self.step >= self.opts.stop_after and not last:
                    return {"stopped_at": self.step}
        finally:
            self.loader.close()
            getattr(self.inputs.source, "close", lambda: None)()  # stream source: commit its cache tail
            self.logger.close()
            self.train_seconds = time.perf_counter() - start
            wait_total = self.loader.wait_s
        self.data_wait_frac = wait_total / max(self.train_seconds, 1e-9)
        return self._write_summary(cached=False)

    def _log_window(self, window: dict[str, float], running: dict[str, torch.Tensor], pending: float) -> float:
        """One console/JSONL line for the steps since the last one (the only host sync of the loop)."""
        now = time.perf_counter()
        n = max(1, int(window["steps"]))
        values = torch.stack([running[k].float().reshape(()) for k in sorted(running)] + [torch.tensor(pending)])
        values = all_reduce_sum(values.cpu())
        world = self.dist.world_size
        keys = sorted(running)
        fig = {k: float(values[i]) / n / world for i, k in enumerate(keys)}
        fig["lr"] = float(running["lr"]) / n
        window_tokens = float(values[-1])
        elapsed = now - window["start"]
        fig["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
        fig["data_wait_frac"] = (self.loader.wait_s - window["wait"]) / max(elapsed, 1e-9)
        self.logger.train(self.step, fig)
        self.tokens_seen += int(window_tokens)
        window.update(start=now, wait=self.loader.wait_s, steps=0)
        return 0.0

    def _write_summary(self, cached: bool) -> dict[str, Any]:
        """summary.json: flat figures for `dspark demo`'s table (rank 0 writes it)."""
        if cached:
            state = self._checkpoint_state or {}
            self.step, self.tokens_seen = int(state.get("step", 0)), int(state.get("tokens_seen", 0))
            self.last_val, self.untrained_val = state.get("last_val"), state.get("untrained_val")
        summary: dict[str, Any] = {
            "cached": cached,
            "steps": self.step,
            "tokens": self.tokens_seen,
            "fingerprint": plan_fingerprint(self.plan),
            "checkpoint": str(self.checkpointer.latest() or ""),
            "preempted": self.preempted,
        }
        if self.init_source is not None:
            summary["init_from"] = self.init_source.record()
        if not cached:
            summary["train_seconds"] = round(self.train_seconds, 2)
            summary["data_wait_frac"] = round(self.data_wait_frac, 4)
        summary.update(summary_figures("val_", self.last_val, per_position=True))
        summary.update(summary_figures("untrained_val_", self.untrained_val, per_position=False))
        if self.dist.is_main:
            self.opts.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.opts.out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary
