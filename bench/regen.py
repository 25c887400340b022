"""Regen throughput vs calling the engine directly (goal: ratio >= 0.9).

Both sides use one `vllm.LLM` on the recipe's target, the same prompts (the recipe's first turns) and
the same per-request sampling (seeds included), so they generate the same tokens:
- `direct`: `LLM.chat(all prompts, [SamplingParams...])`, timed around the call only;
- `regen`: `run_regen(recipe, tmpdir, llm=...)` end to end — planning, prompt-length checks, the
  step loop, reasoning split, records, Arrow shards with fsync'd commits, manifest and summary.
Rounds alternate (direct, regen, direct, regen, ...) after a warm-up; the best round of each is
compared. Generated tokens/s = generated tokens / wall seconds.

    python bench/regen.py                         # tiny recipe: tiny:trained, 256 embedded prompts
    python bench/regen.py --prompts 64 --rounds 1 --set regen.sampling.max_new_tokens=64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.loading import DEFAULT_RECIPE  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def first_turn_requests(recipe, target_path: str) -> list:
    """The exact first-turn requests regen sends (messages + sampling fields) for the recipe's prompts."""
    from dspark_data.prompts.normalize import Prompt
    from dspark_data.regen.conversation import Conversation, TurnRequest
    from dspark_data.regen.plan import build_plan
    from dspark_data.regen.run import make_context
    from dspark_data.regen.sampling import resolve_sampling, target_generation_defaults

    sampling = resolve_sampling(recipe.regen.sampling, target_generation_defaults(target_path, recipe.target.revision))
    ctx = make_context(recipe, target_path, sampling)
    plan = build_plan(recipe.prompts, recipe.seed, num_shards=1, shard_index=0, group_size=recipe.regen.shard_samples)
    requests = []
    for item in plan.items:
        if isinstance(item, Prompt):
            req = Conversation(item, ctx).next_request()
            if isinstance(req, TurnRequest):
                requests.append(req)
    return requests


def time_direct(llm, requests) -> tuple[float, int]:
    from vllm import SamplingParams

    messages = [r.messages for r in requests]
    params = [SamplingParams(**r.params) for r in requests]
    start = time.perf_counter()
    outputs = llm.chat(messages, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)


def time_regen(llm, recipe) -> tuple[float, int]:
    from dspark_data.regen import run_regen

    out = Path(tempfile.mkdtemp(prefix="dspark-bench-regen-"))
    try:
        start = time.perf_counter()
        summary = run_regen(recipe, out, llm=llm, progress=False)
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return elapsed, summary.run_generated_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, e.g. seq_len=256")
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts (default: the recipe's)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from dspark_data.regen.backends.engine import start_engine
    from dspark_data.targets import resolve_target
    from schemas.loading import load_recipe

    sets = list(args.sets) + ["prompts.turns=first"]
    if args.prompts:
        sets.append(f"prompts.num_prompts={args.prompts}")
    recipe = load_recipe(args.recipe, sets)
    target_path = resolve_target(recipe.target.model)
    requests = first_turn_requests(recipe, target_path)
    t = recipe.target
    engine = start_engine(target_path, revision=t.revision, dtype=t.dtype,
                          max_model_len=t.max_model_len or recipe.seq_len, seed=recipe.seed)
    llm = engine.llm
    try:
        time_direct(llm, requests[:8])  # warm-up
        direct, regen = [], []
        for _ in range(args.rounds):
            direct.append(time_direct(llm, requests))
            regen.append(time_regen(llm, recipe))
    finally:
        engine.shutdown()
    d_time, d_tokens = min(direct)
    r_time, r_tokens = min(regen)
    d_rate, r_rate = d_tokens / d_time, r_tokens / r_time
    result = {
        "recipe": recipe.name,
        "target": recipe.target.model,
        "prompts": len(requests),
        "max_new_tokens": recipe.regen.sampling.max_new_tokens,
        "direct_s": round(d_time, 2),
        "direct_generated_tokens": d_tokens,
        "direct_tokens_per_s": round(d_rate, 1),
        "regen_s": round(r_time, 2),
        "regen_generated_tokens": r_tokens,
        "regen_tokens_per_s": round(r_rate, 1),
        "ratio": round(r_rate / d_rate, 3),
        "rounds": {"direct": direct, "regen": regen},
    }
    print(f"direct LLM.chat : {d_tokens} tokens in {d_time:.2f} s = {d_rate:.1f} generated tok/s")
    print(f"dspark regen    : {r_tokens} tokens in {r_time:.2f} s = {r_rate:.1f} generated tok/s")
    print(f"ratio regen/direct = {r_rate / d_rate:.3f} (goal >= 0.9); same tokens: {d_tokens == r_tokens}")
    if args.json:
        from dspark_data.atomic import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())


if __name__ == "__main__":
    main()
