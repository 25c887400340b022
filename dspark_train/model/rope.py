"""Rotary position embedding, computed the way vLLM's `get_rope` does for the variants we support.

vLLM (model_executor/layers/rotary_embedding/base.py) builds `inv_freq = 1 / theta^(2i/d)` in float32,
a float32 cos/sin table over integer positions, and rotates neox-style (rotate_half: the first and
second halves of each head are the pair). Context keys and block queries/keys are rotated at their
absolute positions. We compute cos/sin on the fly for the positions in the batch (no table length
limit) with the same float32 math, so a trained draft sees identical rotations when served.
"""

from __future__ import annotations

import math

import torch

from dspark_train.model.config import DraftConfig


def rope_inv_freq(config: DraftConfig) -> torch.Tensor:
    """Inverse frequencies (float32, [head_dim/2]) for the config's RoPE variant."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "llama3":
        # Same piecewise rescaling as vLLM's Llama3RotaryEmbedding._compute_inv_freq.
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        orig = float(scaling["original_max_position_embeddings"])
        wave_len = 2 * math.pi / inv_freq
        smooth = (orig / wave_len - low) / (high - low) if low != high else torch.zeros_like(inv_freq)
        inv_freq = torch.where(
            wave_len < orig / high,
            inv_freq,
            torch.where(wave_len > orig / low, inv_freq / factor, (1 - smooth) * inv_freq / factor + smooth * inv_freq),
        )
    return inv_freq


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, config: DraftConfig) -> tuple[torch.Tensor, ...]:
    """cos, sin of shape positions.shape + (head_dim/2,), float32.

    Linear scaling divides positions by the factor (vLLM's LinearScalingRotaryEmbedding builds its table
    over t / factor).
    """
    t = positions.to(torch.float32)
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        t = t / float(scaling["factor"])
    freqs = t.unsqueeze(-1) * inv_freq.to(t.device)  # (..., d/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate heads neox-style. x: (B, heads, N, d); cos/sin: (B, N, d/2), broadcast over heads.

    The rotation runs in float32 and casts back, like vLLM's cos/sin cache applied to model-dtype q/k.
    """
    dtype = x.dtype
    x = x.float()
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, N, d/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dtype)
