"""Short paired training runs per codec: does a lossy codec cost the draft acceptance?

Why: a codec's relative error says nothing directly about acceptance; the draft trained on the decoded
states does. Each codec's dataset (the same samples, see `dspark_data.store.trial`) is trained with the
same recipe and the same seeds; validation anchors are fixed independent of the seed
(`data.loader.VAL_ANCHOR_SEED`) and the validation split is by id hash, so the per-seed difference to
`raw` is paired: the training seed's own +-15% spread (facts.md 3d) cancels out of it.

    rows = train_codecs(recipe, {"raw": dir_raw, "int4-g32": dir_q}, vocab, out_root, seeds=[0, 1], steps=60)
    paired(rows, "val_mean_accepted_length")   # {codec: (mean diff vs raw, std, std/sqrt(n), n)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.recipe import Recipe

TrainRows = dict[str, dict[int, dict[str, Any]]]  # codec -> seed -> summary figures


def train_one(recipe: Recipe, data_dir: Path, vocab: Path | None, out_dir: Path, steps: int | None) -> dict[str, Any]:
    """One training run (cached when already done with the same plan); returns its summary.json dict."""
    from dspark_train.entrypoint import default_options, run

    opts = default_options(recipe, out_dir=out_dir, data_dir=data_dir, vocab_path=vocab, max_steps=steps,
                           progress=False)
    return run(recipe, opts)


def eval_one(train_dir: Path, out_dir: Path, *, prompt_sets: Sequence[str], num_prompts: int,
             max_new_tokens: int) -> dict[str, float]:
    """Greedy offline eval Avg Length per prompt set of the run's exported draft (greedy: the same prompts
    decode the same way for every run, so only the draft differs)."""
    import json

    from dspark_data.atomic import atomic_write_bytes
    from dspark_train.eval.offline import EvalOptions, run_offline_eval
    from dspark_train.export import export_draft

    export_dir = out_dir / "export"
    export_draft(train_dir, export_dir)
    settings = {"prompt_sets": list(prompt_sets), "num_prompts": num_prompts, "max_new_tokens": max_new_tokens,
                "export": json.loads((export_dir / "summary.json").read_text()).get("fingerprint")}
    done = out_dir / "eval-settings.json"
    if done.is_file() and json.loads(done.read_text()) == settings and (out_dir / "eval" / "summary.json").is_file():
        summary = json.loads((out_dir / "eval" / "summary.json").read_text())  # same draft, same prompts: cached
    else:
        summary = run_offline_eval(EvalOptions(draft_dir=export_dir, out_dir=out_dir / "eval",
                                               prompt_sets=list(prompt_sets), modes=["greedy"],
                                               num_prompts=num_prompts, max_new_tokens=max_new_tokens,
                                               num_threads=1))
        atomic_write_bytes(done, json.dumps(settings).encode())
    got = {k: float(v) for k, v in summary.items() if k.endswith("_greedy_avg_length")}
    got["eval_avg_length"] = sum(got.values()) / max(len(got), 1)
    return got


def train_codecs(
    recipe_for_seed: Any,
    datasets: Mapping[str, Path],
    vocab: Path | None,
    out_root: Path,
    *,
    seeds: Sequence[int],
    steps: int | None,
    eval_kw: dict[str, Any] | None = None,
) -> TrainRows:
    """Train every codec's dataset with every seed (`recipe_for_seed(seed) -> Recipe`); with `eval_kw`, also
    export and run the offline eval. Seed-major order, so a cut-short run still has complete pairs."""
    rows: TrainRows = {name: {} for name in datasets}
    for seed in seeds:
        recipe = recipe_for_seed(seed)
        for name, data_dir in datasets.items():
            run_dir = out_root / f"{name}-seed{seed}"
            summary = train_one(recipe, data_dir, vocab, run_dir / "train", steps)
            row = {"val_mean_accepted_length": summary.get("val_mean_accepted_length"),
                   "val_full_accuracy": summary.get("val_full_accuracy"), "steps": summary.get("steps")}
            if eval_kw is not None:
                row.update(eval_one(run_dir / "train", run_dir, **eval_kw))
            rows[name][seed] = row
    return rows


def paired(rows: TrainRows, key: str, reference: str = "raw") -> dict[str, dict[str, float]]:
    """Per codec: mean of `key`, and the paired difference to `reference` over the seeds both have
    (relative: codec / reference - 1), its std over seeds and its standard error std / sqrt(n)."""
    out: dict[str, dict[str, float]] = {}
    ref = rows.get(reference, {})
    for name, by_seed in rows.items():
        values = [float(r[key]) for r in by_seed.values() if r.get(key) is not None]
        diffs = [float(by_seed[s][key]) / float(ref[s][key]) - 1.0 for s in by_seed
                 if s in ref and by_seed[s].get(key) is not None and ref[s].get(key)]
        n = len(diffs)
        mean_d = sum(diffs) / n if n else math.nan
        std = math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
        out[name] = {"mean": sum(values) / len(values) if values else math.nan, "diff": mean_d, "std": std,
                     "sem": std / math.sqrt(n) if n > 1 else math.nan, "n": float(n)}
    return out


def recipe_with_seed(name: str, sets: Sequence[str]) -> Any:
    """`seed -> Recipe` for `train_codecs`: the recipe `name` with `sets` and `seed=<seed>`."""
    from schemas.loading import load_recipe

    def make(seed: int) -> Recipe:
        return load_recipe(name, [*sets, f"seed={seed}"])

    return make
