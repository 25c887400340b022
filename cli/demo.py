"""`dspark demo`: the whole pipeline on the embedded tiny default, then one summary table.

Each stage runs as its own `python -m cli <stage>` process (exactly what a user would type, and
vLLM engines release their memory between stages). A stage that finds its previous output complete
and unchanged says it is cached and returns at once. Stages not built yet are reported as such.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from cli.common import RecipeOpt, SeedOpt, SetOpt, console, resolve_recipe, stage_dir

NOT_BUILT_EXIT = 3

# (label, CLI words, stage directory whose summary.json holds the stage's figures)
PIPELINE: list[tuple[str, list[str], str]] = [
    ("regen", ["regen"], "regen"),
    ("dump-hidden", ["dump-hidden"], "hidden"),
    ("vocab", ["vocab"], "vocab"),
    ("train", ["train"], "train"),
    ("export", ["export"], "export"),
    ("eval", ["eval"], "eval"),
    ("report", ["report"], "report"),
]


def _summary(directory: Path) -> dict:
    path = directory / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def demo(recipe: RecipeOpt = "tiny", set_: SetOpt = None, seed: SeedOpt = None) -> None:
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
    for label, words, directory in PIPELINE:
        console.rule(f"[bold]{label}")
        if words[0] == "report":
            start = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "cli", "report", str(run_root)], check=False).returncode
            seconds = time.perf_counter() - start
        else:
            start = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "cli", *words, *common], check=False).returncode
            seconds = time.perf_counter() - start
        summary = _summary(run_root / directory)
        if code == 0:
            status = "cached (reused)" if summary.get("cached") else "ok"
        elif code == NOT_BUILT_EXIT:
            status = "not built yet"
        else:
            status = f"FAILED (exit {code})"
            failed = True
        statuses.append((label, status, seconds))
        if failed:
            break
    _print_summary(run_root, statuses)
    if failed:
        raise SystemExit(1)


def _print_summary(run_root: Path, statuses: list[tuple[str, str, float]]) -> None:
    """One table for the stages, one for the figures each built stage reported."""
    stages = Table(title=f"dspark demo: {run_root}")
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("seconds", justify="right")
    for label, status, seconds in statuses:
        stages.add_row(label, status, f"{seconds:.1f}")
    console.print(stages)
    figures = Table(title="figures")
    figures.add_column("stage")
    figures.add_column("metric")
    figures.add_column("value", justify="right")
    for _, _, directory in PIPELINE:
        for key, value in _summary(run_root / directory).items():
            if key in {"cached", "fingerprint"} or isinstance(value, (dict, list)):
                continue
            figures.add_row(directory, key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(figures)
