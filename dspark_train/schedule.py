"""Learning-rate schedule: linear warmup, then cosine / linear decay / constant, from the recipe.

The lr is a pure function of the step (`lr_at`), so resuming needs only the step count; the
`LRSchedule` wrapper writes it into the optimizer's param groups each step and checkpoints as two
numbers. Warmup starts at lr/warmup (not 0) so step 0 already moves the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from schemas.recipe import TrainConfig

_TRAIN = TrainConfig()  # the recipe's schedule defaults, for a ScheduleConfig built by hand


@dataclass(frozen=True)
class ScheduleConfig:
    lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Literal["cosine", "linear", "constant"] = _TRAIN.schedule
    min_lr_ratio: float = _TRAIN.min_lr_ratio

    @classmethod
    def from_train(cls, train, total_steps: int) -> ScheduleConfig:
        """From the recipe's `train` section; warmup = ceil(warmup_ratio * total_steps)."""
        warmup = math.ceil(train.warmup_ratio * total_steps)
        return cls(train.lr, total_steps, warmup, train.schedule, train.min_lr_ratio)


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """The lr used for optimizer step `step` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return cfg.lr
    decay_steps = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * factor)


class LRSchedule:
    """Sets the lr of every param group before each optimizer step; state = the next step index."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_index = 0

    def apply(self) -> float:
        """Set and return the lr for the upcoming step."""
        lr = lr_at(self.step_index, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.step_index += 1

    def state_dict(self) -> dict[str, int]:
        return {"step_index": self.step_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_index = int(state["step_index"])
