"""`dspark demo`: the whole pipeline on the embedded tiny default, then one summary table.

Each stage runs as its own `python -m cli <stage>` process (exactly what a user would type, and
vLLM engines release their memory between stages). A stage that finds its previous output complete
and unchanged says it is cached and returns at once; the first stage that fails stops the demo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from cli.common import RecipeOpt, SeedOpt, SetOpt, console, resolve_recipe, stage_dir
from schemas.loading import DEFAULT_RECIPE

# (label, CLI words, stage directory whose summary.json holds the stage's figures, input flags: flag -> stage dir).
# The demo names every input and output explicitly: no stage looks anything up in the working directory.
PIPELINE: list[tuple[str, list[str], str, dict[str, str]]] = [
    ("regen", ["regen"], "regen", {}),
    ("dump-hidden", ["dump-hidden"], "hidden", {"--data": "regen"}),
    ("vocab", ["vocab"], "vocab", {"--data": "hidden"}),
    ("train", ["train"], "train", {"--data": "hidden", "--vocab": "vocab"}),
    ("export", ["export"], "export", {"--checkpoint": "train"}),
    ("eval", ["eval"], "eval", {"--draft": "export"}),
    ("report", ["report"], "report", {}),
]


def stage_argv(run_root: Path, words: list[str], directory: str, inputs: dict[str, str]) -> list[str]:
    """One stage's words with its inputs and output named under `run_root`."""
    argv = [*words, "--out", str(run_root / directory)]
    return argv + [a for flag, stage in inputs.items() for a in (flag, str(run_root / stage))]


def _summary(directory: Path) -> dict:
    path = directory / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def demo(recipe: RecipeOpt = DEFAULT_RECIPE, set_: SetOpt = None, seed: SeedOpt = None) -> None:
    """Run regen -> dump-hidden -> vocab -> train -> export -> eval -> report and print a summary."""
    resolved = resolve_recipe(recipe, set_, seed)
    common = ["--recipe", recipe]
    for item in set_ or []:
        common += ["--set", item]
    if seed is not None:
        common += ["--seed", str(seed)]
    run_root = stage_dir(resolved, "regen").parent
    statuses: list[tuple[str, str, float]] = []
    failed = False
    for label, words, directory, inputs in PIPELINE:
        console.rule(f"[bold]{label}")
        if words[0] == "report":
            start = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "cli", "report", str(run_root)], check=False).returncode
            seconds = time.perf_counter() - start
        else:
            start = time.perf_counter()
            argv = stage_argv(run_root, words, directory, inputs)
            code = subprocess.run([sys.executable, "-m", "cli", *argv, *common], check=False).returncode
            seconds = time.perf_counter() - start
        summary = _summary(run_root / directory)
        if code == 0:
            status = "cached (reused)" if summary.get("cached") else "ok"
        else:
            status = f"FAILED (exit {code})"
            failed = True
        statuses.append((label, status, seconds))
        if failed:
            break
    _print_summary(run_root, statuses)
    if failed:
        raise SystemExit(1)


# (stage directory, summary.json key, label) of the figures the demo's summary shows.
FIGURES: list[tuple[str, str, str]] = [
    ("regen", "samples", "regenerated conversations"),
    ("regen", "generated_tokens", "generated tokens"),
    ("hidden", "samples", "hidden-state samples"),
    ("hidden", "tokens", "hidden-state tokens"),
    ("hidden", "codec", "codec"),
    ("hidden", "bytes_per_token", "bytes/token (stored)"),
    ("hidden", "compression_ratio", "compression ratio vs bf16"),
    ("vocab", "draft_vocab_size", "draft vocab"),
    ("vocab", "coverage", "draft vocab coverage"),
    ("train", "steps", "training steps"),
    ("train", "untrained_val_mean_accepted_length", "val mean accepted length (untrained)"),
    ("train", "val_mean_accepted_length", "val mean accepted length"),
    ("train", "val_full_accuracy", "val full accuracy"),
    ("train", "val_acceptance_rate", "val mean acceptance rate"),
    ("train", "val_confidence_abs_error", "val confidence abs error"),
    ("report", "report", "report"),
]


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(run_root: Path, statuses: list[tuple[str, str, float]]) -> None:
    """The stage table, the key figures, per-position acceptance, and the eval table (seed card shape)."""
    stages = Table(title=f"dspark demo: {run_root}")
    for column in ("stage", "status", "seconds"):
        stages.add_column(column, justify="right" if column == "seconds" else "left")
    for label, status, seconds in statuses:
        stages.add_row(label, status, f"{seconds:.1f}")
    console.print(stages)
    summaries = {directory: _summary(run_root / directory) for _, _, directory, _ in PIPELINE}
    figures = Table(title="summary")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for directory, key, label in FIGURES:
        if key in summaries[directory]:
            figures.add_row(label, _format(summaries[directory][key]))
    positions = [v for k, v in sorted(summaries["train"].items()) if k.startswith("val_acc_pos")]
    if positions:
        figures.add_row("val per-position acceptance", " / ".join(f"{v:.3f}" for v in positions))
    console.print(figures)
    table = run_root / "eval" / "acceptance.md"
    if table.is_file():
        console.print("[bold]offline speculative decoding (eval)[/bold]")
        console.print(table.read_text(), markup=False, highlight=False)
