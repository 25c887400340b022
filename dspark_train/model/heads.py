"""The two DSpark heads on top of the parallel backbone.

Markov head (the "suffix decay" fix): a rank-r bigram logit bias `bias_k = W2(W1[x_{k-1}])` added to the
backbone's draft-vocab logits at draft position k, where x_{k-1} is the token before the one being
predicted (the anchor for k = 1). W1 is indexed by *target* ids (vLLM feeds it the previously sampled
token after mapping it to the target vocab with d2t); W2 writes draft-vocab logits. Training feeds the
ground-truth previous token (teacher forcing); inference feeds the token just sampled, left to right
(vllm/v1/worker/gpu/spec_decode/dspark/speculator.py `_sample_sequential`).

Confidence head: `c_k = sigmoid(proj([h_k ; W1[x_{k-1}]]))` (or `proj(h_k)` without the Markov
embedding), a per-slot estimate of the acceptance probability, computed in float32 as vLLM does
(qwen3_dspark.py `DSparkConfidenceHead`, params_dtype float32, input `.float()`, bias=True).
"""

from __future__ import annotations

import torch
from torch import nn


class MarkovHead(nn.Module):
    """markov_w1: Embedding(target_vocab, r); markov_w2: Linear(r -> draft_vocab, no bias)."""

    def __init__(self, target_vocab_size: int, draft_vocab_size: int, rank: int) -> None:
        super().__init__()
        self.markov_w1 = nn.Embedding(target_vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, draft_vocab_size, bias=False)

    def embed(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """(...) target ids of the previous token -> (..., r)."""
        return self.markov_w1(prev_ids)

    def bias(self, markov_embed: torch.Tensor) -> torch.Tensor:
        """(..., r) -> (..., draft_vocab) logit bias."""
        return self.markov_w2(markov_embed)

    def reset_parameters(self) -> None:
        # W2 = 0 makes the head a no-op at initialisation (LoRA-B style): the backbone learns first, the
        # bias grows from there; W1 still receives gradient through W2 after the first step.
        nn.init.normal_(self.markov_w1.weight, std=0.02)
        nn.init.zeros_(self.markov_w2.weight)


class ConfidenceHead(nn.Module):
    """proj: Linear(H [+ r] -> 1, bias). Returns the logit; callers apply sigmoid (or BCE-with-logits)."""

    def __init__(self, hidden_size: int, markov_rank: int, with_markov: bool) -> None:
        super().__init__()
        self.with_markov = with_markov
        self.proj = nn.Linear(hidden_size + (markov_rank if with_markov else 0), 1, bias=True)

    def forward(self, hidden: torch.Tensor, markov_embed: torch.Tensor | None) -> torch.Tensor:
        """hidden: (..., H) final-normed slot hidden; markov_embed: (..., r) or None -> (...) logits, fp32."""
        x = torch.cat([hidden, markov_embed], dim=-1) if self.with_markov else hidden
        with torch.autocast(device_type=x.device.type, enabled=False):
            return nn.functional.linear(x.float(), self.proj.weight.float(), self.proj.bias.float()).squeeze(-1)

    def reset_parameters(self) -> None:
        # c = 0.5 everywhere at start: an uninformative guess, not a confident one.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
