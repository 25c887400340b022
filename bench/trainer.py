"""Trainer benchmark: tokens/s and the fraction of step time spent waiting for data.

Writes a synthetic hidden-state dataset with the real store (zstd-split codec, the tiny target's shapes:
aux layers 1, 3, 5 + last layer 6, H = 128) and trains the tiny recipe on it through the real loader, once
with the default loader settings (`train.num_workers`, `train.prefetch`) and once synchronously
(`num_workers=0`) for contrast. Figures come from the trainer's own log windows (metrics.jsonl), the
first window (start-up) left out; validation and checkpoints fall outside the timed windows.

    python bench/trainer.py                        # ~1-2 minutes on 2 CPU cores
    python bench/trainer.py --steps 60 --json out.json
    python bench/trainer.py --data runs/tiny/hidden --vocab runs/tiny/vocab   # real shards

Goal (issue #5): data wait < 5% of step time with the default loader settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dspark_data.atomic import atomic_write_bytes  # noqa: E402
from dspark_data.store import HiddenStateWriter  # noqa: E402
from dspark_data.vocab import build_vocab  # noqa: E402
from dspark_train.data import SyntheticHiddenSource  # noqa: E402
from dspark_train.entrypoint import run  # noqa: E402
from dspark_train.trainer import TrainOptions  # noqa: E402
from schemas.loading import (
    DEFAULT_RECIPE,  # noqa: E402
    load_recipe,  # noqa: E402
)

console = Console(width=120)


def write_dataset(directory: Path, samples: int, seq_len: int) -> Path:
    src = SyntheticHiddenSource(samples, layer_ids=[1, 3, 5, 6], hidden_size=128, vocab_size=2048,
                                min_len=seq_len // 4, max_len=seq_len, seed=0)
    with HiddenStateWriter(directory, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split",
                           target="tiny:random", seq_len=seq_len, shard_bytes=8 << 20) as w:
        for i in range(len(src)):
            s = src.get(i)
            w.write(s.id, s.input_ids, s.loss_mask, s.hidden)
    return directory


def measure(recipe, data: Path, vocab: Path | None, out: Path, steps: int) -> dict[str, float]:
    summary = run(recipe, TrainOptions(out_dir=out, data_dir=data, vocab_path=vocab, max_steps=steps, progress=False))
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [w for w in windows if w["kind"] == "train"][1:] or [w for w in windows if w["kind"] == "train"]
    tps = sum(w["tokens_per_s"] for w in windows) / len(windows)
    wait = sum(w["data_wait_frac"] for w in windows) / len(windows)
    return {"tokens_per_s": tps, "data_wait_frac": wait, "steps": summary["steps"], "tokens": summary["tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE)
    p.add_argument("--target", default="tiny:random", help="Target spec (its shapes must match the data).")
    p.add_argument("--data", type=Path, default=None, help="Existing hidden-state dataset (default: synthetic).")
    p.add_argument("--vocab", type=Path, default=None, help="Draft vocab directory (default: built from the data).")
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dspark-bench-trainer-") as tmp:
        root = Path(tmp)
        base = load_recipe(args.recipe, [f"target.model={args.target}"])
        data = args.data or write_dataset(root / "hidden", args.samples, base.seq_len)
        vocab_dir = args.vocab or root / "vocab"
        if args.vocab is None:
            build_vocab(data, vocab_dir, size=base.vocab.draft_vocab_size, target_vocab_size=2048)
        vocab = vocab_dir / "vocab.safetensors"
        quiet = [f"target.model={args.target}", "train.val_every=1000000", "train.save_every=1000000",
                 "train.log_every=5", "train.val_fraction=0.02"]
        rows = {}
        for label, extra in (("default loader", []), ("synchronous (num_workers=0)", ["train.num_workers=0"])):
            recipe = load_recipe(args.recipe, quiet + extra)
            rows[label] = measure(recipe, data, vocab, root / label.split()[0], args.steps)
            rows[label]["num_workers"] = recipe.train.num_workers
            rows[label]["prefetch"] = recipe.train.prefetch
    table = Table(title=f"trainer throughput ({args.recipe} recipe, {args.steps} steps, CPU)")
    for col in ("loader", "workers", "prefetch", "tokens/s", "data wait"):
        table.add_column(col, justify="right" if col != "loader" else "left")
    for label, r in rows.items():
        table.add_row(label, str(r["num_workers"]), str(r["prefetch"]), f"{r['tokens_per_s']:.0f}",
                      f"{100 * r['data_wait_frac']:.1f}%")
    console.print(table)
    goal = rows["default loader"]["data_wait_frac"] < 0.05
    console.print(f"goal data wait < 5% with default settings: {'met' if goal else 'NOT met'}")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(rows, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
