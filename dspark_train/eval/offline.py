"""`dspark eval --draft DIR`: offline acceptance of an exported draft, per prompt set, greedy and sampled.

The draft is loaded from the export directory (what vLLM serves) and runs in torch; the target runs with
transformers (`backend="hf"`, `HfTarget`) or in vLLM (`backend="vllm"`, recipe `eval.backend`: a target class
with HfTarget's interface that the caller injects as `target_factory`, since dspark_train never imports vLLM;
`dspark eval` passes `dspark_data.capture.eval_target.VllmEvalTarget`). Each
prompt is rendered with the target's chat template as one user turn (what the chat endpoint does) and
decoded with `speculate`. Results are vLLM-shaped counters, so the tables compare directly with
`dspark eval --server` and with the seed card.

Outputs in the eval directory: `summary.json` (flat: `<set>_<greedy|sampled>_avg_length`,
`..._pos<i>`), `acceptance.md` (the seed card's tables), `results.json` (raw counters and confidence
calibration per set and mode, read by `dspark report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import AutoTokenizer

from dspark_data.atomic import atomic_write_bytes
from dspark_data.seeding import derive_seed
from dspark_data.stage import Stage, cached_summary, execute, publish_summary, read_summary
from dspark_data.targets.stop_ids import stop_token_ids
from dspark_train.eval.acceptance import AcceptanceCounts, markdown_table
from dspark_train.eval.consistency import consistency_for_set
from dspark_train.eval.prompts import load_prompt_set
from dspark_train.eval.scope import EVAL_DEFAULTS, MODE_TITLES, MODES, RUN_SEED, TARGET_DTYPE, EvalScope
from dspark_train.eval.speculative import Calibration, SamplingParams, speculate
from dspark_train.eval.target import HfTarget
from dspark_train.export.load import LoadedDraft, load_export
from schemas import fingerprint
from schemas.draft import PROVENANCE_NAME
from schemas.summary import EvalSummary

TINY_HIDDEN = 512  # targets at most this wide are evaluated on one CPU thread by default


@dataclass(kw_only=True)
class EvalOptions(EvalScope):
    """Offline eval of an exported draft; the scope (sets, modes, budget) is `EvalScope`'s."""

    draft_dir: Path
    num_speculative_tokens: int | None = None  # default: the export's proposal method
    target: str | None = None  # default: the export's verifier
    target_revision: str | None = None  # default: the export's verifier.revision (with --target: the recipe's)
    dtype: str = TARGET_DTYPE
    draft_sampling: str = "probabilistic"
    seed: int = RUN_SEED
    num_threads: int | None = None  # torch CPU threads (None: 1 for tiny CPU targets, else torch's default)
    consistency: bool = False  # also compare with the trainer's metric on the same data (consistency.py)
    backend: str = EVAL_DEFAULTS.backend  # recipe eval.backend: "hf" (transformers, here) or "vllm" (target_factory)
    # (path, aux_layer_ids, dtype=, revision=) -> a target with HfTarget's interface; required for "vllm"
    target_factory: Callable[..., Any] | None = field(default=None, repr=False)


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of a conversation plus the generation prompt, as vLLM's chat endpoint renders it."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(t) for t in out]


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run with `n` torch CPU threads (None: unchanged), restoring the previous setting afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _export_identity(draft_dir: Path) -> Any:
    """What identifies an export for caching: its own fingerprint, else its files' sizes and times."""
    data = read_summary(draft_dir)
    if data is not None and "fingerprint" in data:
        return data["fingerprint"]
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(draft_dir.iterdir()) if p.is_file()}


class OfflineEvalStage(Stage[dict[str, Any]]):
    """Complete when `summary.json` records the fingerprint of the export and the options, beside results.json."""

    def __init__(self, opts: EvalOptions) -> None:
        self.opts = opts

    def fingerprint(self) -> str:
        opts = self.opts
        return fingerprint({"export": _export_identity(Path(opts.draft_dir)),
                            **{k: str(v) for k, v in vars(opts).items()
                               if k not in ("out_dir", "num_threads", "target_factory")}})

    def cached(self, fingerprint: str) -> dict[str, Any] | None:
        return cached_summary(self.opts.out_dir, fingerprint, ("results.json",))

    def run(self, fingerprint: str) -> dict[str, Any]:
        opts = self.opts
        if opts.backend not in ("hf", "vllm"):
            raise ValueError(f"eval.backend must be 'hf' or 'vllm', got {opts.backend!r}")
        if opts.backend == "vllm" and opts.target_factory is None:
            raise ValueError("eval.backend=vllm needs the vLLM target (dspark eval injects it): pass target_factory")
        loaded = load_export(opts.draft_dir, target=opts.target, revision=opts.target_revision)
        threads = opts.num_threads
        if threads is None and loaded.config.hidden_size <= TINY_HIDDEN:
            # matmuls this small gain nothing from intra-op threads, and spinning threads thrash a busy CPU
            threads = 1
        with cpu_threads(threads):
            summary = _evaluate(opts, loaded)
        summary["fingerprint"] = fingerprint
        publish_summary(opts.out_dir, summary, schema=EvalSummary)
        return summary


def run_offline_eval(opts: EvalOptions) -> dict[str, Any]:
    """Evaluate every (prompt set, mode); write the outputs; return the flat summary (reused when unchanged)."""
    return execute(OfflineEvalStage(opts))


def _evaluate(opts: EvalOptions, loaded: LoadedDraft) -> dict[str, Any]:
    k = opts.num_speculative_tokens or loaded.num_speculative_tokens
    target_path, revision = opts.target or loaded.verifier, loaded.verifier_revision
    make_target = opts.target_factory if opts.backend == "vllm" else HfTarget
    target = make_target(target_path, loaded.aux_layer_ids, dtype=opts.dtype, revision=revision)
    try:
        return _evaluate_with(opts, loaded, target, target_path, revision, k)
    finally:
        if hasattr(target, "close"):
            target.close()  # a vLLM engine: release its processes and memory


def _evaluate_with(
    opts: EvalOptions, loaded: LoadedDraft, target: Any, target_path: str, revision: str | None, k: int
) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(target_path, revision=revision)
    stops = stop_token_ids(target_path, tokenizer, revision)
    results: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"cached": False, "draft": str(opts.draft_dir), "format": loaded.fmt,
                               "backend": opts.backend, "num_speculative_tokens": k,
                               "max_new_tokens": opts.max_new_tokens}
    start = time.monotonic()
    consistency: dict[str, Any] = {}
    for spec in opts.prompt_sets:
        pset = load_prompt_set(spec, opts.num_prompts)
        prompts = [chat_ids(tokenizer, m) for m in pset.conversations]
        if opts.consistency:
            c = consistency_for_set(loaded.model, target, prompts, k=k, max_new_tokens=opts.max_new_tokens,
                                    eos_ids=stops)
            consistency[pset.name] = c
            summary[f"{pset.name}_consistency_spec_avg_length"] = round(c["speculative_decoding"]["avg_length"], 4)
            for key in ("visited", "all"):
                figure = c[f"trainer_metric_{key}_anchors"]["accepted_length"]
                summary[f"{pset.name}_consistency_trainer_{key}_anchors"] = round(figure, 4)
        for mode in opts.modes:
            params = SamplingParams(**{**MODES[mode].__dict__, "draft_sampling": opts.draft_sampling})
            counts, calib, n_tokens = AcceptanceCounts.empty(k), Calibration.empty(k), 0
            for i, ids in enumerate(prompts):
                gen = torch.Generator().manual_seed(derive_seed(opts.seed, "eval", pset.name, mode, i))
                out = speculate(target, loaded.model, ids, k=k, max_new_tokens=opts.max_new_tokens, params=params,
                                eos_ids=stops, generator=gen)
                counts, calib = counts.merge(out.counts), calib.merge(out.calibration)
                n_tokens += len(out.tokens)
            results.setdefault(pset.name, {})[mode] = {
                "counts": counts.to_json(),
                "calibration": calib.to_json(loaded.config.enable_confidence_head),
                "num_prompts": len(prompts),
                "generated_tokens": n_tokens,
            }
            summary[f"{pset.name}_{mode}_avg_length"] = round(counts.avg_length(), 4)
            for j, rate in enumerate(counts.per_position(), 1):
                summary[f"{pset.name}_{mode}_pos{j}"] = round(rate, 4)
    summary["seconds"] = round(time.monotonic() - start, 2)
    write_outputs(opts.out_dir, summary, results, opts.modes, schema=EvalSummary)
    if consistency:
        consistency["trainer_validation"] = _trainer_validation(Path(opts.draft_dir))
        atomic_write_bytes(Path(opts.out_dir) / "consistency.json", (json.dumps(consistency, indent=2) + "\n").encode())
    return summary


def _trainer_validation(draft_dir: Path) -> dict[str, Any] | None:
    """The run's own validation figures, as the export recorded them (None for a foreign export)."""
    provenance = draft_dir / PROVENANCE_NAME
    return json.loads(provenance.read_text()).get("validation") if provenance.is_file() else None


def tables_markdown(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    """The seed card's two tables (one per mode) from a results mapping."""
    parts = []
    for mode in modes:
        rows = {name: AcceptanceCounts.from_json(r[mode]["counts"]) for name, r in results.items() if mode in r}
        if rows:
            parts.append(f"{MODE_TITLES.get(mode, mode)}\n\n{markdown_table(rows)}\n")
    return "\n".join(parts)


def write_outputs(
    out_dir: Path, summary: dict[str, Any], results: dict[str, Any], modes: list[str], *, schema: type[BaseModel]
) -> None:
    """results.json, acceptance.md, then summary.json (validated against `schema`) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "acceptance.md", tables_markdown(results, modes).encode())
    publish_summary(out_dir, summary, schema=schema)
