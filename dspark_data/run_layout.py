"""The default run layout, `runs/<recipe name>/<stage>/` under the working directory: defined here only.

Why one place: the CLI, the torchrun entry point, the stream source's statistics and the ablation all
pick a default output directory from it. It names where a stage WRITES when `--out` is not given, never
where one looks for its input (inputs are always named by a flag, see cli/common.py).
"""

from __future__ import annotations

from pathlib import Path

RUNS_ROOT = Path("runs")
STAGES = ("regen", "hidden", "vocab", "train", "export", "eval", "report")


def run_dir(recipe_name: str) -> Path:
    """`runs/<recipe>`: the root of one recipe's stage directories."""
    return RUNS_ROOT / recipe_name


def stage_dir(recipe_name: str, stage: str) -> Path:
    """`runs/<recipe>/<stage>`: where `stage` writes by default."""
    assert stage in STAGES, stage
    return run_dir(recipe_name) / stage
