"""The token ids that end a generation, as vLLM decides them: generation_config's eos ids plus the tokenizer's.

Why one function: regen splits its records at these ids and eval stops its speculative decoding at them;
two copies could let the two stages disagree on where an answer ends. Kept free of vLLM so the trainer's
eval may import it.
"""

from __future__ import annotations

from typing import Any


def stop_token_ids(target_path: str, tokenizer: Any, revision: str | None = None) -> set[int]:
    """generation_config.json's `eos_token_id` (one id or a list; none when the file is absent) plus the
    tokenizer's eos id."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(target_path, revision=revision).eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except OSError:
        pass
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
