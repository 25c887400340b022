"""DSpark vs. the same draft with its Markov head off, trained on the same data: a per-position table.

    python -m dspark_train.ablation --recipe tiny                 # trains both (cached when done), writes
                                                                  # runs/tiny/train-ablation/markov.{md,json}
    python -m dspark_train.ablation --recipe tiny --data DIR --vocab DIR --out DIR

The Markov-off run is the same recipe with `model.markov_rank=0` (and
`model.confidence_head_with_markov=false`, which needs the Markov embedding), trained into its own
directory; both use the same seed, data split and anchors, so the rows differ only by the head. The
untrained row is the DSpark run's step-0 validation. Figures: docs/model.md, "Metrics".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dspark_data.atomic import atomic_write_bytes
from dspark_data.run_layout import run_dir
from dspark_train.logging_utils import summary_figures
from schemas.loading import DEFAULT_RECIPE, load_recipe

MARKOV_OFF = ["model.markov_rank=0", "model.confidence_head_with_markov=false"]
COLUMNS = [
    ("val_mean_accepted_length", "mean accepted length"),
    ("val_full_accuracy", "full accuracy"),
    ("val_acceptance_rate", "acceptance rate"),
    ("val_confidence_abs_error", "confidence abs err"),
]


def _row(summary: dict[str, Any]) -> dict[str, float | None]:
    """The final validation figures of a train summary.json."""
    keys = [key for key, _ in COLUMNS] + [k for k in summary if k.startswith("val_acc_pos")]
    return {key: summary.get(key) for key in keys}


def _untrained(train_dir: Path) -> dict[str, float | None]:
    """Step-0 validation of a run, from its metrics.jsonl (per-position figures included)."""
    for line in (train_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "val" and rec["step"] == 0:
            return _row(summary_figures("val_", rec, per_position=True))  # the summary's names and columns
    return {}


def markdown_table(rows: dict[str, dict[str, float | None]]) -> str:
    """One row per run: the summary figures, then acceptance at each draft position."""
    npos = max((sum(1 for k in r if k.startswith("val_acc_pos")) for r in rows.values()), default=0)
    head = ["run", *(label for _, label in COLUMNS), *(f"acc@{k}" for k in range(1, npos + 1))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        keys = [key for key, _ in COLUMNS] + [f"val_acc_pos{k}" for k in range(1, npos + 1)]
        cells = ["-" if r.get(k) is None else f"{r[k]:.3f}" for k in keys]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def compare(dspark_dir: Path, markov_off_dir: Path, out_dir: Path) -> dict[str, dict[str, float | None]]:
    """Read both runs' summary.json (and DSpark's step-0 validation), write markov.md and markov.json."""
    on = json.loads((dspark_dir / "summary.json").read_text())
    off = json.loads((markov_off_dir / "summary.json").read_text())
    rows = {"untrained": _untrained(dspark_dir), "DSpark (Markov on)": _row(on), "Markov off (rank 0)": _row(off)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "markov.json", (json.dumps(rows, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "markov.md", markdown_table(rows).encode())
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dspark_train.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", "-r", default=DEFAULT_RECIPE)
    p.add_argument("--set", "-s", action="append", default=[], dest="sets")
    p.add_argument("--data", type=Path, required=True, help="Hidden-state dataset directory.")
    p.add_argument("--vocab", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="Root for both runs (default runs/<recipe>).")
    p.add_argument("--max-steps", type=int, default=None)
    args = p.parse_args(argv)
    from dspark_train.entrypoint import default_options, run

    base = load_recipe(args.recipe, args.sets)
    root = args.out or run_dir(base.name)
    dirs = {"on": root / "train", "off": root / "train-markov0"}
    for key, extra in (("on", []), ("off", MARKOV_OFF)):
        recipe = load_recipe(args.recipe, [*args.sets, *extra])
        opts = default_options(recipe, out_dir=dirs[key], data_dir=args.data, vocab_path=args.vocab,
                               max_steps=args.max_steps)
        run(recipe, opts)
    rows = compare(dirs["on"], dirs["off"], root / "train-ablation")
    print(markdown_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
