"""Draft decoder layers, leaf to root: RMSNorm, gated MLP, attention over [context ; block], decoder layer.

Module and parameter names are the ones vLLM's DSpark loader reads (qwen3_dflash.py maps
`self_attn.{q,k,v}_proj` onto its fused qkv_proj and `mlp.{gate,up}_proj` onto gate_up_proj), so an export
is a name-preserving copy of `state_dict()`.

Attention follows vLLM's DFlash draft exactly (DFlashQwen3Attention + precompute_and_store_context_kv):
- block tokens: q/k/v = proj(input_layernorm(h)); per-head q_norm / k_norm; RoPE at absolute positions;
- context: k/v = proj(ctx) with ctx = hidden_norm(fc(aux hidden)) (no per-layer input_layernorm); k_norm
  and RoPE on keys; the same k_proj/v_proj as the block; the context is not updated layer to layer;
- scores scaled by head_dim**-0.5; no causal mask inside the block (all layers full attention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dspark_train.model.config import DraftConfig
from dspark_train.model.rope import apply_rope

# attend(q, k, v) -> out; q: (B, Hq, N, d), k/v: (B, Hkv, T+N, d). Built once per forward by masks.py.
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """y = w * x / rms(x), normalised in float32 then cast back (vLLM's and Qwen3's RMSNorm; no 1+w)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class MLP(nn.Module):
    """down(act(gate(x)) * up(x)), no biases (vLLM's Qwen2MLP with SiluAndMul)."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = F.silu if config.activation == "silu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DraftAttention(nn.Module):
    """Block queries attend to [context keys ; block keys]; which of them is up to `attend` (the mask)."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, d)

    def context_kv(self, ctx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the context (vLLM: precompute_and_store_context_kv). ctx: (B, T, H)."""
        k = self.k_norm(self._heads(self.k_proj(ctx), self.num_kv_heads))  # (B, Hkv, T, d)
        v = self._heads(self.v_proj(ctx), self.num_kv_heads)  # (B, Hkv, T, d)
        return apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        attend: AttendFn,
    ) -> torch.Tensor:
        """x: (B, N, H) normed block hidden; cos/sin: (B, N, d/2) at the block positions."""
        b, n, _ = x.shape
        q = apply_rope(self.q_norm(self._heads(self.q_proj(x), self.num_heads)), cos, sin)  # (B, Hq, N, d)
        k = apply_rope(self.k_norm(self._heads(self.k_proj(x), self.num_kv_heads)), cos, sin)  # (B, Hkv, N, d)
        v = self._heads(self.v_proj(x), self.num_kv_heads)  # (B, Hkv, N, d)
        k = torch.cat([ctx_k.to(k.dtype), k], dim=2)  # (B, Hkv, T+N, d): context first, then the blocks
        v = torch.cat([ctx_v.to(v.dtype), v], dim=2)
        out = attend(q, k, v)  # (B, Hq, N, d)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)  # (B, N, Hq*d)
        return self.o_proj(out)


class DecoderLayer(nn.Module):
    """Pre-norm residual layer: h += attn(input_layernorm(h)); h += mlp(post_attention_layernorm(h))."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.self_attn = DraftAttention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: torch.Tensor,
        ctx_cos: torch.Tensor,
        ctx_sin: torch.Tensor,
        attend: AttendFn,
    ) -> torch.Tensor:
        ctx_k, ctx_v = self.self_attn.context_kv(ctx, ctx_cos, ctx_sin)
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, ctx_k, ctx_v, attend)
        return h + self.mlp(self.post_attention_layernorm(h))
