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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from torch import nn

from dspark_data.shutdown import GracefulStop
from dspark_data.stage import publish_summary
from dspark_data.targets.weights import TargetHead, draft_vocab_probs_and_greedy
from dspark_train.data import Batch, eval_loader
from dspark_train.inputs import load_head
from dspark_train.logging_utils import TrainLogger, summary_figures
from dspark_train.losses import DSparkLoss, slot_targets, slot_targets_topk
from dspark_train.metrics import DraftMetrics
from dspark_train.model.config import DraftConfig
from dspark_train.model.draft import DSparkDraft
from dspark_train.parallelize import all_reduce_sum, parallelize
from dspark_train.preempt import PREEMPTED_MESSAGE, agree_to_stop, gather_window, restore_window
from dspark_train.resume import differences, plan_fingerprint
from dspark_train.run_plan import RunPlan, plan_run
from dspark_train.schedule import LRSchedule, ScheduleConfig
from dspark_train.trackers import open_trackers
from dspark_train.warm_start import load_into
from schemas.recipe import Recipe
from schemas.summary import TrainSummary


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
    """A run with its model: built only for a plan that trains (fresh or resume), never for a cached one."""

    # --- what to do; `_adopt` also copies the plan's decisions onto the trainer (RunPlan's fields: dist,
    # device, autocast_dtype, inputs, train/val indices, loader_cfg, loader, total_steps, plan, init_source,
    # checkpointer, decision), which the loop reads on every step
    recipe: Recipe
    opts: TrainOptions
    run: RunPlan
    # --- model, frozen target head, loss
    draft_config: DraftConfig
    model: DSparkDraft  # the module itself (checkpoints, validation)
    wrapped: nn.Module  # what the training step calls (DDP / FSDP2 / the model)
    head: TargetHead | None  # None with top-K targets: no final norm / lm_head matmul at all
    loss_fn: DSparkLoss
    # --- optimisation
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    # --- bookkeeping
    logger: TrainLogger
    step: int
    tokens_seen: int
    untrained_val: dict[str, float] | None
    last_val: dict[str, float] | None
    notes: list[str]  # resume decisions worth printing once the logger exists

    def __init__(
        self, recipe: Recipe, opts: TrainOptions, stop: GracefulStop | None = None, run: RunPlan | None = None
    ) -> None:
        """`stop`: the caller's entered GracefulStop (entrypoint.run); SIGTERM then ends the loop at a step boundary
        with a checkpoint. Without one (a library caller) SIGTERM keeps its default action. `run`: the plan
        the caller already made with `plan_run` (made here when None); a cached plan has nothing to train:
        read its summary with `cached_summary` instead, so no trainer without a model ever exists."""
        self.recipe, self.opts = recipe, opts
        self.stop = stop or GracefulStop("dspark train")  # not entered: never requested
        run = run if run is not None else plan_run(recipe, opts)
        if run.cached:
            raise ValueError(f"{opts.out_dir}: this plan is already trained (cached); use cached_summary(...)")
        self._adopt(run)
        self.step, self.tokens_seen = 0, 0
        self.untrained_val = self.last_val = None
        self.notes = [check.message for check in self.inputs.checks]
        self._open_window: list[dict[str, Any]] | None = None
        self._resumed_window: tuple[dict[str, torch.Tensor], int] = ({}, 0)
        self.preempted = False
        self._build_model(run.checkpoint_state)
        self._build_optimizer()
        # Restore last: everything it overwrites now exists.
        if self.decision.action == "resume" and run.latest is not None:
            self._restore(run.latest)
        self._open_logger()

    # ------------------------------------------------------------------ setup helpers
    def _adopt(self, run: RunPlan) -> None:
        """The plan's decisions become the trainer's own attributes (the loop reads them on every step)."""
        self.run = run
        self.dist, self.device, self.autocast_dtype = run.dist, run.device, run.autocast_dtype
        self.inputs, self.loader_cfg, self.loader = run.inputs, run.loader_cfg, run.loader
        self.train_indices, self.val_indices = run.train_indices, run.val_indices
        self.total_steps, self.plan, self.init_source = run.total_steps, run.plan, run.init_source
        self.checkpointer, self.decision = run.checkpointer, run.decision

    def _build_model(self, state: dict[str, Any] | None) -> None:
        """The draft (fp32 masters), the frozen target head the loss targets need, the loss, the parallel wrap."""
        recipe = self.recipe
        # Architecture from the checkpoint on resume, else from recipe + target.
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
        self.wrapped = parallelize(self.model, self.dist, fsdp=recipe.train.fsdp)

    def _build_optimizer(self) -> None:
        """AdamW over the trainable parameters only (frozen target tensors are buffers), and its lr schedule."""
        t = self.recipe.train
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=t.lr,
            betas=tuple(t.betas),
            weight_decay=t.weight_decay,
        )
        self.schedule = LRSchedule(self.optimizer, ScheduleConfig.from_train(t, self.total_steps))

    def _open_logger(self) -> None:
        """Console/JSONL logger and trackers (rank 0), then the notes gathered while building."""
        recipe, opts = self.recipe, self.opts
        self.logger = TrainLogger(
            opts.out_dir,
            enabled=self.dist.is_main,
            total_steps=self.total_steps,
            start_step=self.step,
            trackers=open_trackers(
                recipe.train.report_to, opts.out_dir, run_name=f"{recipe.name}-{plan_fingerprint(self.plan)[:8]}",
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
            next_probs, next_greedy = draft_vocab_probs_and_greedy(batch.target_hidden, self.head, self.model.t2d)
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
        """Run the plan; returns the summary written to summary.json."""
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
        data_wait_frac = wait_total / max(self.train_seconds, 1e-9)
        return write_summary(
            self.run, self.opts.out_dir, step=self.step, tokens=self.tokens_seen, last_val=self.last_val,
            untrained_val=self.untrained_val, preempted=self.preempted,
            timing={"train_seconds": round(self.train_seconds, 2), "data_wait_frac": round(data_wait_frac, 4)},
        )

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


def write_summary(
    run: RunPlan,
    out_dir: Path,
    *,
    step: int,
    tokens: int,
    last_val: dict[str, float] | None,
    untrained_val: dict[str, float] | None,
    preempted: bool = False,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """summary.json: flat figures for `dspark demo`'s table (rank 0 writes it). `timing` only for a run that
    trained now (train_seconds, data_wait_frac); a cached run has none."""
    summary: dict[str, Any] = {
        "cached": timing is None,
        "steps": step,
        "tokens": tokens,
        "fingerprint": plan_fingerprint(run.plan),
        "checkpoint": str(run.checkpointer.latest() or ""),
        "preempted": preempted,
    }
    if run.init_source is not None:
        summary["init_from"] = run.init_source.record()
    summary.update(timing or {})
    summary.update(summary_figures("val_", last_val, per_position=True))
    summary.update(summary_figures("untrained_val_", untrained_val, per_position=False))
    if run.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        publish_summary(out_dir, summary, schema=TrainSummary)
    return summary


def cached_summary(run: RunPlan, out_dir: Path) -> dict[str, Any]:
    """The summary of a plan the checkpoint already finished: its figures, read back; nothing is built."""
    state = run.checkpoint_state or {}
    return write_summary(
        run, out_dir, step=int(state.get("step", 0)), tokens=int(state.get("tokens_seen", 0)),
        last_val=state.get("last_val"), untrained_val=state.get("untrained_val"),
    )
