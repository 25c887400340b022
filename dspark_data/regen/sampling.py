"""Resolve the sampling parameters once, so both backends send exactly the same request.

Why resolve ourselves instead of letting vLLM fill in defaults: the in-process engine uses the
`SamplingParams` we build, while a server fills every field a request leaves out from *its own*
defaults. Sending every field explicitly, from one resolved `SamplingRecord`, is what makes the two
backends produce the same tokens. Precedence: the recipe's `regen.sampling` value, else the target's
`generation_config.json` (read the way vLLM reads it: `GenerationConfig.to_diff_dict()`), else vLLM's
neutral default.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas.recipe import SamplingConfig
from schemas.regen import SamplingRecord

log = logging.getLogger(__name__)

NEUTRAL: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def target_generation_defaults(target_path: str, revision: str | None = None) -> dict[str, Any]:
    """The sampling fields set in the target's generation_config.json (empty if it has none)."""
    try:
        from transformers import GenerationConfig

        diff = GenerationConfig.from_pretrained(target_path, revision=revision).to_diff_dict()
    except OSError:
        return {}
    return {k: diff[k] for k in NEUTRAL if diff.get(k) is not None}


def resolve_sampling(cfg: SamplingConfig, target_defaults: dict[str, Any]) -> SamplingRecord:
    """Recipe value > target default > neutral, for every field a request carries."""
    values: dict[str, Any] = {k: target_defaults.get(k, v) for k, v in NEUTRAL.items()}
    for key in ("temperature", "top_p", "top_k"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    if values["top_k"] is None or int(values["top_k"]) < 0:
        values["top_k"] = 0  # vLLM: 0 (or -1) disables top-k; store one spelling
    return SamplingRecord(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        top_k=int(values["top_k"]),
        min_p=float(values["min_p"]),
        repetition_penalty=float(values["repetition_penalty"]),
        presence_penalty=float(values["presence_penalty"]),
        frequency_penalty=float(values["frequency_penalty"]),
        max_new_tokens=cfg.max_new_tokens,
    )


def request_fields(sampling: SamplingRecord, seed: int, max_tokens: int) -> dict[str, Any]:
    """Every sampling field of one request (OpenAI body keys, which are also SamplingParams kwargs)."""
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "seed": seed,
        "max_tokens": max_tokens,
    }


def check_engine_defaults(sampling_cfg: SamplingConfig, resolved: SamplingRecord, engine_defaults: Any) -> None:
    """Warn if vLLM's own reading of the target defaults disagrees with ours (fields the recipe left None)."""
    for key in ("temperature", "top_p", "top_k"):
        if getattr(sampling_cfg, key) is not None:
            continue
        theirs = getattr(engine_defaults, key, None)
        ours = getattr(resolved, key)
        if theirs is not None and key == "top_k" and theirs < 0:
            theirs = 0
        if theirs is not None and float(theirs) != float(ours):
            log.warning("target default %s: vLLM reads %s, dspark resolved %s", key, theirs, ours)
