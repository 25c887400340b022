"""The target for offline evaluation, run with transformers: logits and the aux-layer hidden states.

Speculative decoding is simulated exactly: each verification step feeds the target the anchor and the K
draft tokens on top of its KV cache, exactly as vLLM's verification forward does, and rolls the cache
back past rejected tokens. The aux hidden states of every verified token become draft context.

Layer ids follow vLLM's convention (id k = residual stream entering decoder layer k), which is
transformers' `hidden_states[k]` for k < num_hidden_layers; id N would need the pre-norm last layer that
transformers does not return, and drafts never read it, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from dspark_train.dtypes import TORCH_DTYPES


@dataclass
class TargetStep:
    logits: torch.Tensor  # (n, V) float32: row i predicts the token after input i
    aux_hidden: torch.Tensor  # (n, n_aux * H) aux layers of the n inputs, concatenated in id order


class HfTarget:
    """A causal LM with a KV cache that `forward` extends and `truncate` rolls back."""

    def __init__(
        self, path: str, aux_layer_ids: list[int], dtype: str, device: str = "cpu",
        revision: str | None = None,
    ) -> None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype], revision=revision)
        self.model = model.to(device).eval()
        n = self.model.config.get_text_config().num_hidden_layers
        bad = [i for i in aux_layer_ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"aux layer ids {bad} outside [0, {n}) for this {n}-layer target")
        self.aux_layer_ids = list(aux_layer_ids)
        self.device = torch.device(device)
        self.cache = DynamicCache()

    @property
    def length(self) -> int:
        """Tokens in the KV cache."""
        return self.cache.get_seq_length()

    def reset(self) -> None:
        self.cache = DynamicCache()

    @torch.no_grad()
    def forward(self, ids: list[int]) -> TargetStep:
        """Append `ids` after the cached tokens and return their logits and aux hidden states."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, output_hidden_states=True)
        self.cache = out.past_key_values
        aux = torch.cat([out.hidden_states[i][0] for i in self.aux_layer_ids], dim=-1)  # (n, n_aux*H)
        return TargetStep(out.logits[0].float(), aux)

    def truncate(self, length: int) -> None:
        """Drop cached tokens beyond `length` (the rejected drafts of the last step)."""
        extra = self.length - length
        if extra > 0:
            self.cache.crop(-extra)
