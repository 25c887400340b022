"""Read a training checkpoint back as the draft it describes (what export and its card need).

A checkpoint (`dspark_train/checkpoint.py`) is a step directory with `model.safetensors` (trainable
weights plus the persistent d2t/t2d buffers, fp32), `state.json` (draft architecture, data and vocab
fingerprints, target directory, last validation figures) and `recipe.json`. The draft is rebuilt with
the target's frozen embedding and lm_head rows, so `DSparkDraft.exportable_state_dict()` yields exactly
vLLM's tensors. Nothing is unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dspark_data.atomic import backup_path
from dspark_train.model import DraftConfig, DSparkDraft

LATEST = "latest"


def find_checkpoint(path: Path) -> Path:
    """A step directory from itself, a `checkpoints/` directory or a train directory (via `latest`)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for base in (path, path / "checkpoints"):
        pointer = base / LATEST
        if pointer.is_file():
            step = base / pointer.read_text().strip()
            if not (step / "state.json").is_file():  # a re-save of this step killed half-way (read-only here:
                step = backup_path(step)  # the trainer's next start renames it back)
            if (step / "state.json").is_file():
                return step
    raise FileNotFoundError(
        f"no training checkpoint at {path}: expected a step directory (state.json) or a train directory "
        "with checkpoints/latest; run `dspark train` first or pass --checkpoint"
    )


@dataclass
class TrainedDraft:
    """One checkpoint, read."""

    path: Path
    step: int
    config: DraftConfig
    state: dict[str, Any]
    recipe: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def train_dir(self) -> Path:
        """`<train dir>` of `<train dir>/checkpoints/step-N`."""
        return self.path.parent.parent

    @property
    def validation(self) -> dict[str, float]:
        return dict(self.state.get("last_val") or {})

    def build_model(self, target_embed: torch.Tensor, target_lm_head: torch.Tensor) -> DSparkDraft:
        """The draft with its trained weights and the target's frozen tensors installed."""
        t2d = self.weights.get("t2d")
        model = DSparkDraft(self.config, target_embed.float(), target_lm_head.float(), t2d)
        missing, unexpected = model.load_state_dict(self.weights, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {self.path} does not fit its own draft config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model.eval()


def read_checkpoint(path: Path) -> TrainedDraft:
    step_dir = find_checkpoint(path)
    state = json.loads((step_dir / "state.json").read_text())
    recipe = json.loads((step_dir / "recipe.json").read_text()) if (step_dir / "recipe.json").is_file() else {}
    if "draft_config" not in state:
        raise ValueError(f"{step_dir}/state.json has no draft_config: not a dspark training checkpoint")
    return TrainedDraft(
        path=step_dir,
        step=int(state.get("step", 0)),
        config=DraftConfig.from_dict(state["draft_config"]),
        state=state,
        recipe=recipe,
        weights=load_file(str(step_dir / "model.safetensors")),
    )
