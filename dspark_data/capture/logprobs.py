"""The target's top-K next-token log-probs, from each place a backend finds them, in the store's form.

Three sources, one result (`dspark_data.store.topk.TopK`, row t = distribution of token t+1):
- vLLM in process: `RequestOutput.prompt_logprobs` with `SamplingParams(prompt_logprobs=K,
  flat_logprobs=True)`. Position i (i >= 1) scores token i given tokens < i; vLLM lays each position out
  as [the prompt token, rank 1, ..., rank K], so the top-K is entries 1..K, already rank-ordered. The flat
  form is read straight from its lists (no dict per position: vLLM's dict form costs a Python object per
  entry, which dominates the capture's cost at K = 64).
- vLLM's OpenAI server (`prompt_logprobs` in a /v1/completions reply, JSON): per position a dict
  token id -> {logprob, rank}; the top-K are the entries with rank <= K (the prompt token is an extra
  entry when it is outside the top-K).
- transformers: log_softmax of the float32 logits, then torch.topk.
Position 0 (no previous token) has no entry; the last row (no next token) is stored empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dspark_data.store.topk import TopK, from_logprobs, with_empty_last_row


class LogprobsError(ValueError):
    """The engine's log-probs do not have the shape a top-K capture needs."""


def _finish(ids: np.ndarray, lps: np.ndarray) -> TopK:
    ids, lps = with_empty_last_row(ids, lps)
    return from_logprobs(ids, lps)


def from_vllm_prompt_logprobs(prompt_logprobs: Any, tokens: int, k: int) -> TopK:
    """`RequestOutput.prompt_logprobs` (FlatLogprobs or a list of dicts) of a `tokens`-long prompt -> TopK."""
    if prompt_logprobs is None or len(prompt_logprobs) != tokens:
        got = None if prompt_logprobs is None else len(prompt_logprobs)
        raise LogprobsError(f"vLLM returned prompt log-probs for {got} positions, expected {tokens}")
    if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs: primitive lists, read without dicts
        starts = np.asarray(prompt_logprobs.start_indices[1:], dtype=np.int64)
        ends = np.asarray(prompt_logprobs.end_indices[1:], dtype=np.int64)
        if starts.size and not np.all(ends - starts == k + 1):
            raise LogprobsError(f"vLLM returned {sorted(set((ends - starts).tolist()))} entries per position, "
                                f"expected {k + 1}: is the engine's max_logprobs >= {k}?")
        cols = (starts[:, None] + np.arange(1, k + 1)[None, :]).reshape(-1)
        all_ids = np.asarray(prompt_logprobs.token_ids, dtype=np.int64)
        all_lps = np.asarray(prompt_logprobs.logprobs, dtype=np.float32)
        return _finish(all_ids[cols].reshape(-1, k), all_lps[cols].reshape(-1, k))
    return from_position_dicts(list(prompt_logprobs)[1:], k)


def from_position_dicts(positions: Sequence[Mapping[Any, Any] | None], k: int) -> TopK:
    """Per-position dicts token id -> Logprob (or its JSON: {"logprob", "rank"}) for positions 1..T-1."""
    rows_ids = np.zeros((len(positions), k), dtype=np.int64)
    rows_lp = np.zeros((len(positions), k), dtype=np.float32)
    for i, entry in enumerate(positions):
        if entry is None:
            raise LogprobsError(f"no log-probs at prompt position {i + 1}")
        top = []
        for token, value in entry.items():
            rank = value["rank"] if isinstance(value, Mapping) else value.rank
            logprob = value["logprob"] if isinstance(value, Mapping) else value.logprob
            if rank is not None and rank <= k:
                top.append((int(token), float(logprob)))
        if len(top) != k:
            raise LogprobsError(f"prompt position {i + 1} has {len(top)} entries of rank <= {k}, expected {k}")
        rows_ids[i] = [t for t, _ in top]
        rows_lp[i] = [lp for _, lp in top]
    return _finish(rows_ids, rows_lp)


def from_logits(logits: torch.Tensor, k: int) -> TopK:
    """(T, V) logits of one sequence -> TopK (row T-1, which predicts past the end, is stored empty)."""
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)
    values, ids = torch.topk(lp, k, dim=-1)
    return _finish(ids.cpu().numpy(), values.cpu().numpy())
