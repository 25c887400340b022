"""`dspark eval --server URL`: every (prompt set, mode) measured on a live vLLM server, written like offline.

Results go to `<eval dir>/vllm/` in the offline layout (`results.json`, `acceptance.md`, `summary.json`), so
`dspark report` can put vLLM's figures next to the offline ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark_train.eval.offline import write_outputs
from dspark_train.eval.prompts import load_prompt_set
from dspark_train.eval.scope import MODES, RUN_SEED, EvalScope
from dspark_train.eval.server import ChatRequests, measure_server, served_model
from schemas.summary import LiveEvalSummary

LIVE_SUBDIR = "vllm"


@dataclass(kw_only=True)
class LiveOptions(EvalScope):
    """Live eval against a vLLM server; the scope (sets, modes, budget) is `EvalScope`'s."""

    url: str
    concurrency: int = 16
    seed: int | None = RUN_SEED
    timeout_s: float = 600.0


def run_live_eval(opts: LiveOptions) -> dict[str, Any]:
    """Measure each set and mode from counter deltas; write `<out>/vllm/`; return the flat summary."""
    model = served_model(opts.url)
    summary: dict[str, Any] = {"cached": False, "server": opts.url, "model": model,
                               "max_new_tokens": opts.max_new_tokens}
    results: dict[str, dict[str, Any]] = {}
    for spec in opts.prompt_sets:
        pset = load_prompt_set(spec, opts.num_prompts)
        for mode in opts.modes:
            params = MODES[mode]
            req = ChatRequests(max_tokens=opts.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                               concurrency=opts.concurrency, timeout=opts.timeout_s, seed=opts.seed)
            run = measure_server(opts.url, pset.conversations, req, model=model)
            if run.num_failed:
                summary[f"{pset.name}_{mode}_failed_requests"] = run.num_failed
            results.setdefault(pset.name, {})[mode] = {
                "counts": run.counts.to_json(),
                "num_prompts": run.num_requests,
                "failed": run.num_failed,
                "generated_tokens": run.completion_tokens,
                "seconds": round(run.seconds, 2),
            }
            summary[f"{pset.name}_{mode}_avg_length"] = round(run.counts.avg_length(), 4)
            for j, rate in enumerate(run.counts.per_position(), 1):
                summary[f"{pset.name}_{mode}_pos{j}"] = round(rate, 4)
    write_outputs(Path(opts.out_dir) / LIVE_SUBDIR, summary, results, opts.modes, schema=LiveEvalSummary)
    return summary
