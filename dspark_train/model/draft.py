"""DSparkDraft: DFlash backbone + Markov head + confidence head, trained on many blocks per document.

Shapes: B documents, T tokens, A anchors per document, S = block_size slots per block, P draft tokens per
block (S-1, or S with sample_from_anchor), H hidden, D draft vocab, V target vocab.

    context_hidden (B, T, n_aux*H_t) --fc--> hidden_norm --> ctx (B, T, H)       [keys/values only]
    block ids (B, A, S) = [x_a, MASK...] --frozen target embedding--> (B, A*S, H) [queries]
    layers (attend to [ctx ; own block], mask in masks.py) --> norm --> (B, A, S, H)
    predicting slots (B, A, P, H) --frozen lm_head rows (t2d)--> + Markov bias --> logits (B, A, P, D)
                                  --confidence head--> confidence logits (B, A, P)

`propose` runs one block per row left to right the way vLLM's DSpark speculator does at inference, and
returns per-slot draft probabilities for rejection sampling. Training's `forward` and `propose` share every
module; only the mask and the previous-token source (ground truth vs sampled) differ, and a test checks
that the same block gives the same logits both ways.

Frozen pieces (target embedding, draft lm_head = target lm_head rows where t2d, d2t/t2d) are buffers: they
are not trained and not part of the optimizer state; `exportable_state_dict` adds lm_head/d2t/t2d for a
reduced vocab because vLLM requires them then (qwen3_dspark.py `load_weights`). With DDP, construct every
rank from the same target head and pass `broadcast_buffers=False` (the buffers are identical already).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dspark_train.model.config import DraftConfig
from dspark_train.model.heads import ConfidenceHead, MarkovHead
from dspark_train.model.layers import AttendFn, DecoderLayer, RMSNorm
from dspark_train.model.masks import anchor_block_mask, block_positions, flex_attend, predicted_positions, sdpa_attend
from dspark_train.model.rope import rope_cos_sin, rope_inv_freq


@dataclass
class DraftOutput:
    """Training forward output; per draft position k = 1..P of every anchor."""

    logits: torch.Tensor  # (B, A, P, D) float32 draft-vocab logits, Markov bias included
    confidence_logits: torch.Tensor | None  # (B, A, P) float32 pre-sigmoid, None without the head
    positions: torch.Tensor  # (B, A, P) int64 position of the token each slot predicts (anchor + k)
    valid: torch.Tensor  # (B, A, P) bool: anchor valid and the predicted position inside the sequence


@dataclass
class Proposal:
    """`propose` output for N drafted tokens per row."""

    draft_ids: torch.Tensor  # (B, N) int64 draft-vocab ids sampled
    token_ids: torch.Tensor  # (B, N) int64 the same tokens as target-vocab ids (d2t applied)
    logits: torch.Tensor  # (B, N, D) float32 logits each token was drawn from (Markov bias included)
    probs: torch.Tensor  # (B, N, D) float32 softmax(logits / temperature) (temperature 1 when greedy)
    confidence: torch.Tensor | None  # (B, N) float32 sigmoid of the confidence head


class DSparkDraft(nn.Module):
    """The draft. Parameter names are exactly those of vLLM's Qwen3DSparkModel checkpoint (no `model.`)."""

    def __init__(
        self,
        config: DraftConfig,
        target_embed: torch.Tensor | None = None,
        target_lm_head: torch.Tensor | None = None,
        t2d: torch.Tensor | None = None,
    ) -> None:
        """`target_embed`/`target_lm_head`: (V, H) target weights (random when None: tests only).
        `t2d`: bool (V,) draft-vocab membership with draft_vocab_size True entries (None: full vocab)."""
        super().__init__()
        c = config
        self.config = c
        self.fc = nn.Linear(c.fc_in_features, c.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.markov_head = MarkovHead(c.target_vocab_size, c.draft_vocab_size, c.markov_rank) if c.markov_rank else None
        self.confidence_head = (
            ConfidenceHead(c.hidden_size, c.markov_rank, c.confidence_head_with_markov)
            if c.enable_confidence_head
            else None
        )
        self.register_buffer("inv_freq", rope_inv_freq(c), persistent=False)
        self.register_buffer("embed_tokens", torch.empty(c.target_vocab_size, c.hidden_size), persistent=False)
        self.register_buffer("lm_head_weight", torch.empty(c.draft_vocab_size, c.hidden_size), persistent=False)
        self.register_buffer("t2d", torch.ones(c.target_vocab_size, dtype=torch.bool))
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.long))
        self.reset_parameters()
        self.set_target_weights(target_embed, target_lm_head, t2d)

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        """Trainable weights: N(0, 0.02) linears, unit norms, Markov W2 and confidence head at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.markov_head is not None:
            self.markov_head.reset_parameters()
        if self.confidence_head is not None:
            self.confidence_head.reset_parameters()

    @torch.no_grad()
    def set_target_weights(
        self,
        target_embed: torch.Tensor | None,
        target_lm_head: torch.Tensor | None,
        t2d: torch.Tensor | None,
    ) -> None:
        """Install the frozen target embedding, the lm_head rows selected by t2d, and d2t.

        Draft id i is the i-th target id in ascending order where t2d is True, so d2t[i] = target_id(i) - i,
        the offsets vLLM adds to sampled draft ids (qwen3_dspark.py `map_draft_to_target`).
        """
        c = self.config
        if t2d is None:
            if c.draft_vocab_size != c.target_vocab_size:
                raise ValueError("a reduced draft vocab needs t2d (the draft-vocab mask over the target vocab)")
            t2d = torch.ones(c.target_vocab_size, dtype=torch.bool)
        t2d = t2d.to(torch.bool).cpu()
        if t2d.shape != (c.target_vocab_size,) or int(t2d.sum()) != c.draft_vocab_size:
            raise ValueError(
                f"t2d must be bool ({c.target_vocab_size},) with {c.draft_vocab_size} True entries, "
                f"got shape {tuple(t2d.shape)} with {int(t2d.sum())}"
            )
        target_ids = t2d.nonzero().squeeze(-1)  # (D,) ascending
        device = self.fc.weight.device
        self.t2d.copy_(t2d.to(device))
        self.d2t.copy_((target_ids - torch.arange(c.draft_vocab_size)).to(device))
        gen = torch.Generator().manual_seed(0)
        frozen = (("embed_tokens", target_embed, None), ("lm_head_weight", target_lm_head, target_ids))
        for name, weight, rows in frozen:
            if weight is None:
                weight = torch.randn(c.target_vocab_size, c.hidden_size, generator=gen) * 0.02
            if weight.shape != (c.target_vocab_size, c.hidden_size):
                raise ValueError(f"target {name} has shape {tuple(weight.shape)}, expected (V, H)")
            if rows is not None:
                weight = weight[rows.to(weight.device)]  # (D, H) draft lm_head rows
            setattr(self, name, weight.detach().to(device).clone())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ shared pieces
    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Matmul with a frozen buffer; outside autocast the buffer follows x's dtype."""
        if not torch.is_autocast_enabled(x.device.type) and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
        return F.linear(x, weight)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Target-vocab ids -> frozen target embeddings, in the trainable weights' dtype."""
        return self.embed_tokens[ids].to(self.fc.weight.dtype)

    def context(self, context_hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, n_aux*H_t) concatenated aux layers -> (B, T, H) = hidden_norm(fc(.))."""
        return self.hidden_norm(self.fc(context_hidden.to(self.fc.weight.dtype)))

    def backbone(
        self,
        ctx: torch.Tensor,
        ctx_pos: torch.Tensor,
        block_h: torch.Tensor,
        block_pos: torch.Tensor,
        attend: AttendFn,
    ) -> torch.Tensor:
        """ctx (B, T, H) at ctx_pos (B, T); block_h (B, N, H) at block_pos (B, N) -> final-normed (B, N, H)."""
        ctx_cos, ctx_sin = rope_cos_sin(ctx_pos, self.inv_freq, self.config)
        cos, sin = rope_cos_sin(block_pos, self.inv_freq, self.config)
        h = block_h
        for layer in self.layers:
            h = layer(h, cos, sin, ctx, ctx_cos, ctx_sin, attend)
        return self.norm(h)

    def draft_logits(self, head_hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., D) backbone logits through the frozen lm_head rows, float32."""
        return self._linear(head_hidden, self.lm_head_weight).float()

    def markov_embed(self, prev_ids: torch.Tensor) -> torch.Tensor | None:
        return self.markov_head.embed(prev_ids) if self.markov_head is not None else None

    def markov_bias(self, markov_embed: torch.Tensor | None) -> torch.Tensor | float:
        return self.markov_head.bias(markov_embed).float() if markov_embed is not None else 0.0

    def confidence_logits(self, head_hidden: torch.Tensor, markov_embed: torch.Tensor | None) -> torch.Tensor | None:
        if self.confidence_head is None:
            return None
        return self.confidence_head(head_hidden, markov_embed)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        context_hidden: torch.Tensor,
        input_ids: torch.Tensor,
        anchors: torch.Tensor,
        anchor_valid: torch.Tensor | None = None,
        attention: str = "sdpa",
    ) -> DraftOutput:
        """All anchors of every document in one pass, teacher-forced.

        context_hidden: (B, T, n_aux*H_t) aux layers per token; input_ids: (B, T) target ids;
        anchors: (B, A) int64 positions; anchor_valid: (B, A) bool (padding False).
        attention: "sdpa" (dense boolean mask, CPU and GPU, with backward) or "flex" (GPU).
        """
        c = self.config
        b, t = input_ids.shape
        a, s, p = anchors.shape[1], c.block_size, c.num_draft_tokens
        if anchor_valid is None:
            anchor_valid = torch.ones_like(anchors, dtype=torch.bool)
        anchors = torch.where(anchor_valid, anchors, torch.zeros_like(anchors))
        device = input_ids.device

        ctx = self.context(context_hidden)  # (B, T, H)
        ctx_pos = torch.arange(t, device=device).expand(b, t)  # (B, T)
        block_ids = torch.full((b, a, s), c.mask_token_id, dtype=torch.long, device=device)
        block_ids[:, :, 0] = input_ids.gather(1, anchors)  # (B, A, S): [x_a, MASK, ...]
        block_pos = block_positions(anchors, s)  # (B, A, S)
        if attention == "flex":
            attend = flex_attend(anchors, t, s)
        elif attention == "sdpa":
            attend = sdpa_attend(anchor_block_mask(anchors, t, s))
        else:
            raise ValueError(f"attention must be 'sdpa' or 'flex', got {attention!r}")
        h = self.backbone(ctx, ctx_pos, self.embed(block_ids.view(b, a * s)), block_pos.view(b, a * s), attend)
        h = h.view(b, a, s, -1)[:, :, c.first_predicting_slot : c.first_predicting_slot + p]  # (B, A, P, H)

        # Draft position k predicts x_{a+k}; its Markov input is the ground-truth x_{a+k-1}.
        positions = predicted_positions(anchors, p)  # (B, A, P)
        prev_pos = (positions - 1).clamp(max=t - 1)
        prev_ids = input_ids.gather(1, prev_pos.view(b, a * p)).view(b, a, p)  # (B, A, P)
        emb = self.markov_embed(prev_ids)  # (B, A, P, r) or None
        logits = self.draft_logits(h) + self.markov_bias(emb)  # (B, A, P, D)
        valid = anchor_valid.unsqueeze(-1) & (positions < t)
        return DraftOutput(logits, self.confidence_logits(h, emb), positions, valid)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def propose(
        self,
        context_hidden: torch.Tensor,
        anchor_ids: torch.Tensor,
        context_lens: torch.Tensor | None = None,
        num_tokens: int | None = None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Proposal:
        """Draft one block per row, the way vLLM's DSpark speculator does.

        context_hidden: (B, T, n_aux*H_t) aux hidden states of positions 0..T-1 (right-padded);
        anchor_ids: (B,) the token at position `a = context_lens` (the bonus token the target just sampled);
        context_lens: (B,) valid context per row (default T). Tokens are drawn left to right: draft position k
        adds the Markov bias of the previous token (the anchor, then each sampled token mapped to the target
        vocab), then takes the argmax (temperature 0) or samples softmax(logits / temperature).

        `num_tokens` = vLLM's num_speculative_tokens N (default P). Like vLLM, the block is then N+1 slots
        (anchor as bonus token) or N slots (sample_from_anchor), not block_size: a shorter block than the
        one trained on changes every slot's hidden state (attention inside the block is bidirectional), so
        serve with N = P for the trained behaviour.
        """
        c = self.config
        b, t, _ = context_hidden.shape
        p = c.num_draft_tokens
        n = p if num_tokens is None else num_tokens
        if not 1 <= n <= p:
            raise ValueError(f"num_tokens must be in [1, {p}], got {n}")
        s = n + c.first_predicting_slot  # query slots per request (vLLM: num_query_per_req)
        device = context_hidden.device
        lens = torch.full((b,), t, dtype=torch.long, device=device) if context_lens is None else context_lens.long()
        anchors = lens.view(b, 1)  # (B, 1)

        ctx = self.context(context_hidden)
        ctx_pos = torch.arange(t, device=device).expand(b, t)
        block_ids = torch.full((b, s), c.mask_token_id, dtype=torch.long, device=device)
        block_ids[:, 0] = anchor_ids
        block_pos = block_positions(anchors, s).view(b, s)  # (B, S): a .. a+S-1
        attend = sdpa_attend(anchor_block_mask(anchors, t, s))  # context p < a, whole block
        h = self.backbone(ctx, ctx_pos, self.embed(block_ids), block_pos, attend)  # (B, S, H)
        h = h[:, c.first_predicting_slot :]  # (B, N, H)
        base = self.draft_logits(h)  # (B, N, D)

        prev = anchor_ids.long()
        draft_ids, logits_out, embeds = [], [], []
        for k in range(n):
            emb = self.markov_embed(prev)  # (B, r) or None
            logits_k = base[:, k] + self.markov_bias(emb)  # (B, D)
            if temperature > 0:
                probs_k = torch.softmax(logits_k / temperature, dim=-1)
                tok = torch.multinomial(probs_k, 1, generator=generator).squeeze(-1)
            else:
                tok = logits_k.argmax(dim=-1)
            draft_ids.append(tok)
            logits_out.append(logits_k)
            embeds.append(emb)
            prev = tok + self.d2t[tok]  # target id of the sampled token feeds the next Markov step
        ids = torch.stack(draft_ids, dim=1)  # (B, N)
        logits = torch.stack(logits_out, dim=1)  # (B, N, D)
        probs = torch.softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        emb_all = torch.stack(embeds, dim=1) if embeds[0] is not None else None  # (B, N, r)
        conf = self.confidence_logits(h, emb_all)
        return Proposal(
            draft_ids=ids,
            token_ids=ids + self.d2t[ids],
            logits=logits,
            probs=probs,
            confidence=conf.sigmoid() if conf is not None else None,
        )

    # ------------------------------------------------------------------ export
    def exportable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors vLLM's DSpark loader reads, under its names (contiguous, detached, CPU).

        Always: fc, hidden_norm, layers.*, norm, markov_head.* (rank > 0), confidence_head.* (if enabled).
        Reduced draft vocab: also `lm_head.weight` (D, H) and `d2t` (D,) int64, which vLLM requires
        (qwen3_dspark.py raises without them), and `t2d` (V,) bool, which vLLM skips but speculators reads.
        Never the embedding: vLLM shares the target's (spec_decode/dspark/utils.py `load_dspark_model`).
        """
        out = {k: v.detach().cpu().contiguous() for k, v in self.named_parameters()}
        if self.config.draft_vocab_size < self.config.target_vocab_size:
            out["lm_head.weight"] = self.lm_head_weight.detach().cpu().contiguous()
            out["d2t"] = self.d2t.detach().cpu().contiguous()
            out["t2d"] = self.t2d.detach().cpu().contiguous()
        return out
