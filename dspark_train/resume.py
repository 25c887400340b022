"""Decide what a `dspark train` invocation does with an existing train directory: start, resume, or reuse.

The decision compares fingerprints, never file existence:
- `plan fingerprint`: everything that changes the trained weights except how long to train (recipe
  seed, layers, vocab, model, loss, optimisation settings, the data and vocab fingerprints, the
  target, the world size). Logging and loader-speed knobs (`val_every`, `save_every`, `log_every`,
  `num_workers`, `prefetch`, `report_to`, `preempt_grace_s`) are left out: they do not change a bit
  of the weights.
- `total_steps`: how long the plan trains.

| checkpoint in the train dir                  | without --resume                  | with --resume            |
|----------------------------------------------|-----------------------------------|--------------------------|
| none                                         | fresh start                       | error: nothing to resume |
| same plan, final, step >= total_steps        | reuse (`cached: true`)            | reuse                    |
| same plan, interrupted or more steps asked   | resume (exact when not final)     | resume                   |
| another plan                                 | error naming the differing keys   | resume (model from ckpt) |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schemas.base import fingerprint

# Recipe fields that cannot change the weights: excluded from the plan fingerprint.
NON_SEMANTIC_TRAIN = ("val_every", "save_every", "log_every", "num_workers", "prefetch", "report_to",
                      "preempt_grace_s")
# How long to train: compared as total_steps instead.
LENGTH_TRAIN = ("epochs", "max_steps")


def plan_dict(recipe_dict: dict[str, Any], *, data_fp: str, vocab_fp: str, target: dict[str, Any],
              world_size: int) -> dict[str, Any]:
    """The inputs of the plan fingerprint, readable (stored in state.json so mismatches can be named)."""
    train = {k: v for k, v in recipe_dict["train"].items() if k not in NON_SEMANTIC_TRAIN + LENGTH_TRAIN}
    return {
        "seed": recipe_dict["seed"],
        "seq_len": recipe_dict["seq_len"],
        "aux_layers": recipe_dict["capture"]["aux_layers"],
        "vocab": recipe_dict["vocab"],
        "model": recipe_dict["model"],
        "loss": recipe_dict["loss"],
        "train": train,
        "data": data_fp,
        "draft_vocab": vocab_fp,
        "target": target,
        "world_size": world_size,
    }


def plan_fingerprint(plan: dict[str, Any]) -> str:
    return fingerprint(plan)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values (for error messages)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class RunConflict(ValueError):
    """The train directory holds another run, or there is nothing to resume; the message says what to do."""


@dataclass(frozen=True)
class Decision:
    action: Literal["fresh", "resume", "cached"]
    checkpoint: Path | None
    message: str


def decide(
    latest: Path | None,
    state: dict[str, Any] | None,
    *,
    plan: dict[str, Any],
    total_steps: int,
    resume: bool,
    train_dir: Path,
) -> Decision:
    """Apply the table in the module docstring; raise RunConflict (naming the keys) when refused."""
    if latest is None or state is None:
        if resume:
            raise RunConflict(f"--resume: no checkpoint in {train_dir / 'checkpoints'} to resume from")
        return Decision("fresh", None, "starting a new run")
    same = state.get("plan_fingerprint") == plan_fingerprint(plan)
    done = bool(state.get("final")) and int(state["step"]) >= total_steps
    if same and done:
        return Decision("cached", latest, f"final checkpoint {latest.name} matches this run: reusing it")
    if same or resume:
        why = "interrupted run" if not state.get("final") else f"training on to {total_steps} steps"
        return Decision("resume", latest, f"resuming from {latest.name} ({why})")
    diff = differences(state.get("plan", {}), plan)
    raise RunConflict(
        f"{train_dir} holds checkpoints of another run ({latest.name}); differences: "
        + "; ".join(diff[:8])
        + ". Pass --resume to continue that run with these settings, or --out DIR to start a new one."
    )
