"""Greedy parity between transformers and vLLM on a target: do both backends generate the same tokens?

Regen (vLLM) and the trainer's target logits (from stored hidden states) must describe the same model;
this check catches a broken conversion, template or dtype mismatch early. Near-tie logits can flip
under bfloat16 kernel differences, so the tiny target is compared in both dtypes.

Run: `python -m dspark_data.targets.parity tiny:trained --dtypes bfloat16 float32 --out parity.json`.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

from dspark_data.atomic import atomic_write_bytes
from dspark_data.targets.resolve import resolve_target


def chat_prompt_ids(target: str, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each conversation rendered by transformers with the target's chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    rendered = (tok.apply_chat_template(c, add_generation_prompt=True, return_dict=True) for c in conversations)
    return [list(r["input_ids"]) for r in rendered]


def hf_greedy(target: str, prompts: list[list[int]], max_tokens: int, dtype: str) -> list[list[int]]:
    """Greedy continuations from transformers, one prompt at a time (no padding effects)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=getattr(torch, dtype)).eval()
    eos = set(model.generation_config.eos_token_id or [])
    outs = []
    with torch.no_grad():
        for ids in prompts:
            seq = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=max_tokens, temperature=None, top_p=None,
                top_k=None,
            )[0, len(ids) :].tolist()  # fmt: skip
            cut = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
            outs.append(seq[:cut])
    return outs


def vllm_greedy(
    target: str, conversations: list[list[dict[str, str]]], max_tokens: int, dtype: str
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids vLLM rendered, greedy continuations) through `LLM.chat`, i.e. vLLM's own template path."""
    from vllm import SamplingParams

    from dspark_data.engine.llm import start_llm

    engine = start_llm(dict(model=target, dtype=dtype, max_model_len=1024, enforce_eager=True, seed=0,
                            enable_prefix_caching=False))
    llm = engine.llm
    try:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        results = llm.chat(conversations, params, use_tqdm=False)
        return [list(r.prompt_token_ids) for r in results], [list(r.outputs[0].token_ids) for r in results]
    finally:
        engine.shutdown()
        del llm, engine
        gc.collect()


def greedy_parity(target: str, num_prompts: int = 32, max_tokens: int = 16, dtypes=("float32",)) -> dict[str, Any]:
    """Per dtype: how many prompts give identical greedy tokens (first `max_tokens`) in both backends."""
    from dspark_data.prompts.embedded import load_embedded_prompts

    target = resolve_target(target)
    conversations = [r["messages"] for r in load_embedded_prompts()[:num_prompts]]
    prompts = chat_prompt_ids(target, conversations)
    report: dict[str, Any] = {"target": target, "num_prompts": len(prompts), "max_tokens": max_tokens}
    for dtype in dtypes:
        hf = hf_greedy(target, prompts, max_tokens, dtype)
        vllm_prompts, vl = vllm_greedy(target, conversations, max_tokens, dtype)
        same = [a[:max_tokens] == b[:max_tokens] for a, b in zip(hf, vl, strict=True)]
        report[dtype] = {
            "identical": sum(same),
            "mismatched_prompts": [i for i, s in enumerate(same) if not s],
            "chat_template_ids_match": sum(a == b for a, b in zip(prompts, vllm_prompts, strict=True)),
            "sample_hf": hf[0],
            "sample_vllm": vl[0],
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="tiny:trained, tiny:random or a local directory")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--out", help="also write the JSON report here (vLLM logs to stdout too)")
    args = parser.parse_args()
    report = json.dumps(greedy_parity(args.target, args.num_prompts, args.max_tokens, tuple(args.dtypes)))
    if args.out:
        atomic_write_bytes(Path(args.out), (report + "\n").encode())
    print(report)


if __name__ == "__main__":
    main()
