"""The offline-eval target in vLLM (recipe `eval.backend: vllm`): how a large target is evaluated without
DSpark serving. dspark_train never imports this module; `dspark eval` hands its class to the evaluator.

It has the interface of `dspark_train.eval.target.HfTarget` (`forward` appends tokens and returns their
logits and aux hidden states, `truncate` rolls back, `reset`, `length`), so the same `speculate` loop runs
the draft in torch against either backend. Each `forward` is one request to the in-process capture engine
(`VllmCapture`, prefill only) over the whole sequence so far; its aux layers become draft context, and its
last layer (id N, before the final norm) gives the target's FULL next-token distribution through the
target's own final norm and lm_head (`target_logits`), the quantity the trainer also learns from. So:

- greedy acceptance is exact: the draft is checked against the target's argmax at every position, i.e.
  against its greedy continuation;
- sampled acceptance is exact rejection sampling on the target's full probabilities (temperature, then
  top-p, as vLLM samples), not a top-K approximation.

Cost: the engine recomputes the whole sequence on every verification step (prefix caching stays off: a
cached prefix would yield no hidden states), i.e. about (prompt + generated) x steps prefill tokens per
prompt, and prompts run one after another. On a GPU node that is seconds per prompt even for a large
target; the tiny target on CPU takes well under a second per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dspark_data.capture.backend import EngineOptions, capture_all
from dspark_data.capture.layers import plan_layers
from dspark_data.targets import load_target_info
from dspark_data.targets.weights import load_target_head, target_logits
from schemas.recipe import Recipe, TargetConfig


@dataclass
class EvalStep:
    logits: torch.Tensor  # (n, V) float32: row i predicts the token after input i
    aux_hidden: torch.Tensor  # (n, n_aux * H) aux layers of the n inputs, concatenated in the order asked


class VllmEvalTarget:
    """A target served by an in-process vLLM capture engine; a token list stands in for the KV cache."""

    def __init__(
        self,
        path: str,
        aux_layer_ids: list[int],
        dtype: str,
        revision: str | None = None,
        *,
        max_model_len: int = 4096,
        tensor_parallel_size: int = TargetConfig.default_of("tensor_parallel_size"),
        gpu_memory_utilization: float = TargetConfig.default_of("gpu_memory_utilization"),
    ) -> None:
        from dspark_data.capture.vllm_backend import VllmCapture

        info = load_target_info(path, revision)
        n = info.num_hidden_layers
        bad = [i for i in aux_layer_ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"aux layer ids {bad} outside [0, {n}) for this {n}-layer target")
        self.plan = plan_layers(sorted(set(aux_layer_ids)), True, n, info.hidden_size)
        self.aux_index = [list(self.plan.stored_ids).index(i) for i in aux_layer_ids]
        self.last_index = list(self.plan.stored_ids).index(n)
        self.head = load_target_head(path, revision=revision).to(dtype=torch.float32)
        options = EngineOptions(dtype=dtype, revision=revision, max_model_len=max_model_len, batch_size=1,
                                tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization)
        self.engine = VllmCapture(path, self.plan, options)
        self.max_model_len = max_model_len
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        """Tokens the target has seen (what HfTarget's KV cache holds)."""
        return len(self.tokens)

    def reset(self) -> None:
        self.tokens = []

    @torch.no_grad()
    def forward(self, ids: list[int]) -> EvalStep:
        """Append `ids` and return their logits (float32, from the target's head) and aux hidden states."""
        seq = [*self.tokens, *(int(t) for t in ids)]
        if len(seq) > self.max_model_len:
            raise ValueError(
                f"eval sequence of {len(seq)} tokens exceeds the vLLM eval engine's max_model_len="
                f"{self.max_model_len}: raise target.max_model_len or lower --max-new-tokens"
            )
        captured = capture_all(self.engine, [seq])[0]
        new = captured.hidden[len(self.tokens):]  # (n, L, H) in stored order
        self.tokens = seq
        aux = new[:, self.aux_index].reshape(new.shape[0], -1)
        return EvalStep(target_logits(new[:, self.last_index], self.head), aux)

    def truncate(self, length: int) -> None:
        """Forget tokens beyond `length` (the rejected drafts of the last step)."""
        del self.tokens[length:]

    def close(self) -> None:
        self.engine.close()


def vllm_target_factory(recipe: Recipe, max_new_tokens: int) -> Callable[..., VllmEvalTarget]:
    """What `dspark eval` injects for `eval.backend: vllm`: the recipe's engine settings (tensor parallel
    size, memory share) and a context of the prompt (at most `target.max_model_len`, else seq_len tokens) plus
    `max_new_tokens` and one verification block (K <= 15 drafts and the anchor)."""
    t = recipe.target
    context = (t.max_model_len or recipe.seq_len) + max_new_tokens + 16
    return functools.partial(VllmEvalTarget, max_model_len=context, tensor_parallel_size=t.tensor_parallel_size,
                             gpu_memory_utilization=t.gpu_memory_utilization)
