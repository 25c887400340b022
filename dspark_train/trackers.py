"""Experiment trackers fed alongside `metrics.jsonl` (recipe `train.report_to`): TensorBoard, Weights & Biases.

`metrics.jsonl` stays the record of the run (resume truncates it exactly); trackers are mirrors of the same
records under `train/<key>` and `val/<key>`. Each is an optional extra (`pip install 'dspark[wandb]'`): one
that is not installed is named in a warning and skipped, so a recipe that asks for W&B still trains on a
machine without it. W&B honours its own environment (`WANDB_MODE=offline`, `WANDB_PROJECT`, ...); the run
id derives from the run's plan fingerprint and train directory, so a resumed run continues the same W&B
run while the same recipe trained into another directory is another W&B run.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Protocol

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the pyproject extra that installs it


class Tracker(Protocol):
    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _scalars(kind: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {
        f"{kind}/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoardTracker:
    def __init__(self, out_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step)

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        for name, value in _scalars(kind, metrics).items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, out_dir: Path, run_name: str, run_id: str, config: dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            dir=str(out_dir), name=run_name, id=run_id, resume="allow", config=config,
            project=None, reinit="finish_previous",
        )

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        self._run.log(_scalars(kind, metrics), step=step)

    def close(self) -> None:
        self._run.finish()


def run_id(fingerprint: str, out_dir: Path) -> str:
    """A stable tracker run id: the same plan in the same train directory (a resume) gets the same one."""
    return hashlib.sha256(f"{fingerprint}:{Path(out_dir).resolve()}".encode()).hexdigest()[:16]


def open_trackers(
    names: list[str], out_dir: Path, *, run_name: str, fingerprint: str, config: dict[str, Any], start_step: int,
    warn: Any = print,
) -> list[Tracker]:
    """The trackers that could be opened; a missing package is a warning naming the extra to install."""
    trackers: list[Tracker] = []
    for name in names:
        try:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(out_dir, start_step))
            elif name == "wandb":
                trackers.append(WandbTracker(out_dir, run_name, run_id(fingerprint, out_dir), config))
            else:
                raise ValueError(f"train.report_to: unknown tracker {name!r} (known: {sorted(EXTRAS)})")
        except ImportError as exc:
            warn(f"train.report_to lists {name!r} but it is not installed ({exc.name or exc}): "
                 f"pip install 'dspark[{EXTRAS[name]}]'. Logging to metrics.jsonl without it.")
    return trackers
