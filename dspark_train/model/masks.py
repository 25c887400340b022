"""Where each block sits and what it may see: positions and the anchor-block attention mask.

A block anchored at position `a` holds `[x_a, MASK x (block_size-1)]` at positions `a .. a+block_size-1`.
Draft position k = 1..P (P = num_draft_tokens) predicts `x_{a+k}` in both layouts; it is block slot
`k - 1 + first_predicting_slot` (slot k with the anchor as bonus token, slot k-1 with sample_from_anchor).

Visibility, matching vLLM's DFlash/DSpark inference (spec_decode/dflash/speculator.py
`_prepare_dflash_inputs_kernel`): the query block is placed right after the last verified token, so its
anchor (the bonus token) sits at `last_valid_pos + 1` and the KV cache holds the context at positions
`0 .. a-1` (the target has not yet run on the anchor, so there is no hidden state for it). Hence:
- context key at position p is visible to a block iff `p < a` (strictly before its anchor);
- block keys are visible iff they are in the query's own block (bidirectional; the DFlash layers are
  non-causal); other blocks are never visible.

Training packs many blocks of one document into one sequence of queries, so the mask is per query row:
keys are `[context (T) ; all blocks (A*S)]`. On CPU this is a boolean tensor for
`scaled_dot_product_attention` (flex attention has no CPU backward); `flex_attend` builds the same
pattern as a block-sparse mask for GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dspark_train.model.layers import AttendFn


def block_positions(anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, A) anchor positions -> (B, A, S) absolute positions of every block slot."""
    return anchors.unsqueeze(-1) + torch.arange(block_size, device=anchors.device)


def predicted_positions(anchors: torch.Tensor, num_draft_tokens: int) -> torch.Tensor:
    """(B, A) anchors -> (B, A, P): position of the token draft position k = 1..P predicts (a + k)."""
    return anchors.unsqueeze(-1) + torch.arange(1, num_draft_tokens + 1, device=anchors.device)


def anchor_block_mask(anchors: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, A*S, T + A*S); True = may attend.

    Row `i*S + j` is slot j of block i. Context column p is True iff p < anchors[b, i]; block columns are
    True only inside block i. Every row sees at least its own block, so padded (invalid) anchors never
    produce an all-masked row (which would give NaN).
    """
    b, a = anchors.shape
    s = block_size
    device = anchors.device
    kv_pos = torch.arange(context_len, device=device)
    ctx = kv_pos.view(1, 1, 1, -1) < anchors.view(b, a, 1, 1)  # (B, A, 1, T)
    ctx = ctx.expand(b, a, s, context_len).reshape(b, a * s, context_len)  # (B, A*S, T)
    blk_id = torch.arange(a * s, device=device) // s
    own = (blk_id.view(-1, 1) == blk_id.view(1, -1)).expand(b, a * s, a * s)  # (B, A*S, A*S)
    return torch.cat([ctx, own], dim=-1).unsqueeze(1)  # (B, 1, A*S, T+A*S)


def sdpa_attend(mask: torch.Tensor) -> AttendFn:
    """Attention with a dense boolean mask; runs (forward and backward) on any device."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    return attend


_compiled_flex = None


def flex_attend(anchors: torch.Tensor, context_len: int, block_size: int, compile: bool = True) -> AttendFn:
    """The same visibility as `anchor_block_mask`, as a flex-attention BlockMask (GPU only: no CPU backward).

    Memory stays O(T + A*S) instead of the dense mask's O(A*S * (T + A*S)), and fully masked tiles are
    skipped, which matters at the seed recipe's 1024 anchors x 8 slots over 4096 context tokens.
    `compile=False` runs flex's eager reference path (forward only, any device): tests use it to check
    that this mask_mod and `anchor_block_mask` agree.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    global _compiled_flex
    if compile and _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)  # dynamic shapes after the first recompile
    flex = _compiled_flex if compile else flex_attention
    b, a = anchors.shape
    s, t = block_size, context_len
    anchors = anchors.contiguous()

    def mask_mod(bi: torch.Tensor, hi: torch.Tensor, qi: torch.Tensor, kvi: torch.Tensor) -> torch.Tensor:
        blk = qi // s
        in_ctx = kvi < t
        ctx_ok = kvi < anchors[bi, blk]
        own_ok = (kvi - t) // s == blk
        return (in_ctx & ctx_ok) | (~in_ctx & own_ok)

    block_mask = create_block_mask(mask_mod, b, None, a * s, t + a * s, device=anchors.device)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])

    return attend
