"""DSpark training loss: a weighted mix of CE / TV / KL per draft slot, plus the confidence-head BCE.

Per slot (draft position k = 1..P of an anchor, predicting x_{a+k}):
- `ce`: -log q(x_{a+k}) with the true next token mapped to its draft id. A token outside the draft vocab
  cannot be proposed at all, so it is left out of CE (its slot still counts in TV/KL, where the missing
  target mass is what the draft loses); `ce_oov_frac` reports how often that happens.
- `tv`: TV(q, p) = 1 - sum_v min(q_v, p_v), p the target's probabilities on the draft vocab (not
  renormalised; dspark_data/targets/weights.py), so 1 - TV is exactly the rejection-sampling acceptance
  probability of the slot.
- `kl`: KL(p_hat || q) with p_hat = p renormalised over the draft vocab (forward KL, distillation style).
- confidence: BCE(sigmoid(c_k), stopgrad(1 - TV_k)).
Each term is averaged with position weights w_k = exp(-(k-1)/gamma) over the valid slots:
sum(w_k * l * m) / sum(w_k * m), m = anchor valid & predicted token loss-masked (an assistant token).
Total = sum_i weight_i * term_i + confidence_weight * confidence.

Top-K targets (data without the last layer, `slot_targets_topk`): p is known on the target's top-K ids
(restricted to the draft vocab through t2d), the rest is known only as the tail mass r = 1 - sum_k p_k,
spread over tokens of probability <= p_K (the K-th largest). Then:
- `ce` needs no target distribution: exact.
- `tv` uses the known overlap only, TV_hi = 1 - sum_{v in top-K} min(q_v, p_v): an upper bound on the true
  TV (so 1 - TV_hi never over-reports acceptance). The true TV is >= TV_lo = TV_hi - S with
  S = min(r, sum_{v outside the top-K} min(q_v, p_K)), the most overlap the tail can add; `tv_tail_bound`
  (metrics) reports mean S, the bound on the error of every TV figure.
- `kl` puts the tail in one "other" bucket on both sides (target r, draft the mass outside the top-K):
  a lower bound on the true KL (coarsening never increases a KL).
- the greedy target is the stored top-1 id: exact.
See docs/training.md, "Top-K targets".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dspark_train.model.draft import DraftOutput
from schemas.recipe import LossConfig

LOSS_TERMS = ("ce", "tv", "kl")
_LOSS = LossConfig()  # the recipe's loss defaults, for a DSparkLoss built without a recipe


def position_weights(num_draft_tokens: int, gamma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """(P,) float32 weights exp(-(k-1)/gamma) for draft positions k = 1..P."""
    k = torch.arange(num_draft_tokens, dtype=torch.float32, device=device)
    return torch.exp(-k / gamma)


def tv_distance(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """1 - sum(min(q, p)) over the last dim; q, p (..., D) probabilities (p may sum to < 1)."""
    return 1.0 - torch.minimum(q, p).sum(dim=-1)


def masked_weighted_mean(values: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(w * v * m) / sum(w * m); values/mask (..., P), weights (P,). 0 (with grad) when nothing is valid."""
    wm = weights * mask.to(values.dtype)
    return (values * wm).sum() / wm.sum().clamp_min(1e-8)


@dataclass
class SlotTargets:
    """What the loss and metrics compare each draft slot against; all (B, A, P[, D])."""

    probs: torch.Tensor  # (B, A, P, D) target probabilities on the draft vocab
    token_ids: torch.Tensor  # (B, A, P) true next token as a draft id, -1 outside the draft vocab
    greedy_ids: torch.Tensor | None  # (B, A, P) target argmax as a draft id, -1 outside (None: argmax of probs)
    mask: torch.Tensor  # (B, A, P) bool: slot valid and its token loss-masked
    tail: torch.Tensor | None = None  # (B, A, P) top-K targets: target mass outside the top-K (None: exact)
    tail_cap: torch.Tensor | None = None  # (B, A, P) top-K targets: p_K, the most any tail token can have


def tv_bounds(q: torch.Tensor, targets: SlotTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """(TV_hi, S) per slot: TV_hi = 1 - sum min(q, p) over the known p, S = the most overlap the unknown
    tail can add (0 for exact targets), so the true TV lies in [TV_hi - S, TV_hi]."""
    tv = tv_distance(q, targets.probs)
    if targets.tail is None or targets.tail_cap is None:
        return tv, torch.zeros_like(tv)
    outside = targets.probs == 0  # draft ids with no stored probability: where tail tokens can be
    room = (torch.minimum(q, targets.tail_cap.unsqueeze(-1)) * outside).sum(dim=-1)
    return tv, torch.minimum(room, targets.tail)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, T, *rest) at positions (B, A, P) -> (B, A, P, *rest); positions are clamped into [0, T)."""
    b, a, p = positions.shape
    idx = positions.clamp(0, x.shape[1] - 1).reshape(b, a * p)  # (B, A*P)
    rest = x.shape[2:]
    idx = idx.view(b, a * p, *([1] * len(rest))).expand(b, a * p, *rest)
    return x.gather(1, idx).view(b, a, p, *rest)


def slot_targets(
    out: DraftOutput,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    next_probs: torch.Tensor,
    t2d: torch.Tensor,
    next_greedy: torch.Tensor | None = None,
) -> SlotTargets:
    """Gather per-slot targets from per-position ones.

    `next_probs[b, t]` (B, T, D) is the target's distribution over x_{t+1} (from its last hidden state at t,
    `draft_vocab_probs`); slot predicting position p uses row p-1. `next_greedy` (B, T) likewise (draft ids, -1
    outside). `loss_mask` (B, T): True where the token is an assistant token. `t2d`: bool (V,).
    """
    pos = out.positions  # (B, A, P)
    draft_index = draft_index_of(t2d)  # (V,) target id -> draft id
    true_ids = gather_positions(input_ids, pos)  # (B, A, P) target ids
    mask = out.valid & gather_positions(loss_mask, pos)
    return SlotTargets(
        probs=gather_positions(next_probs, pos - 1),
        token_ids=draft_index[true_ids],
        greedy_ids=gather_positions(next_greedy, pos - 1) if next_greedy is not None else None,
        mask=mask,
    )


def draft_index_of(t2d: torch.Tensor) -> torch.Tensor:
    """(V,) target id -> draft id, -1 outside the draft vocab."""
    return torch.where(t2d, torch.cumsum(t2d.long(), 0) - 1, -1)


def slot_targets_topk(
    out: DraftOutput,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    topk_tail: torch.Tensor,
    t2d: torch.Tensor,
) -> SlotTargets:
    """Per-slot targets from the stored top-K (`topk_ids`/`topk_probs` (B, T, K) sorted by descending
    probability, `topk_tail` (B, T)); row t is the distribution of x_{t+1}, like `next_probs`.

    The top-K probabilities of draft-vocab ids are placed in a dense (B, A, P, D) tensor (others 0);
    the top-1 id is the greedy target (exact); the tail and p_K go with them for the TV bounds.
    """
    pos = out.positions
    draft_index = draft_index_of(t2d)
    ids = gather_positions(topk_ids, pos - 1)  # (B, A, P, K)
    probs = gather_positions(topk_probs, pos - 1)
    draft_ids = draft_index[ids]
    in_vocab = draft_ids >= 0
    d = int(t2d.sum())
    dense = probs.new_zeros(*ids.shape[:-1], d).scatter_add_(-1, draft_ids.clamp_min(0), probs * in_vocab)
    greedy = torch.where(probs[..., 0] > 0, draft_ids[..., 0], torch.full_like(draft_ids[..., 0], -1))
    return SlotTargets(
        probs=dense,
        token_ids=draft_index[gather_positions(input_ids, pos)],
        greedy_ids=greedy,
        mask=out.valid & gather_positions(loss_mask, pos),
        tail=gather_positions(topk_tail, pos - 1),
        tail_cap=probs[..., -1],
    )


def kl_term(logq: torch.Tensor, targets: SlotTargets) -> torch.Tensor:
    """KL(p_hat || q) per slot, p_hat = p renormalised over the draft vocab; with top-K targets the tail is
    one "other" bucket on both sides (a lower bound on the true KL)."""
    probs = targets.probs
    if targets.tail is None:
        p_hat = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return (p_hat * (torch.log(p_hat.clamp_min(1e-30)) - logq)).sum(dim=-1)
    total = (probs.sum(dim=-1) + targets.tail).clamp_min(1e-12)
    p_hat, r_hat = probs / total.unsqueeze(-1), targets.tail / total
    known = (p_hat * (torch.log(p_hat.clamp_min(1e-30)) - logq)).sum(dim=-1)
    q_other = (logq.exp() * (probs == 0)).sum(dim=-1).clamp_min(1e-30)
    return known + r_hat * (torch.log(r_hat.clamp_min(1e-30)) - torch.log(q_other))


@dataclass
class DSparkLoss:
    """Build from the recipe's `loss` section: `DSparkLoss.from_config(recipe.loss)`."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(_LOSS.weights))
    confidence_weight: float = _LOSS.confidence_weight
    gamma: float = _LOSS.gamma

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; choose from {LOSS_TERMS}")

    @classmethod
    def from_config(cls, cfg: LossConfig) -> DSparkLoss:
        """The recipe's `loss` section (weights, confidence_weight, gamma)."""
        return cls(dict(cfg.weights), float(cfg.confidence_weight), float(cfg.gamma))

    def __call__(
        self,
        logits: torch.Tensor,
        targets: SlotTargets,
        confidence_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """logits (B, A, P, D) draft logits (Markov bias included) -> {"loss": differentiable total, terms...}.

        Every other entry is a detached scalar for logging: each configured term, `confidence` (when the
        head exists), `ce_oov_frac`, and `num_slots` (valid slots, the natural weight to average over ranks).
        """
        p = logits.shape[-2]
        w = position_weights(p, self.gamma, logits.device)
        mask = targets.mask
        logq = F.log_softmax(logits.float(), dim=-1)  # (B, A, P, D)
        q = logq.exp()
        tv, _ = tv_bounds(q, targets)  # (B, A, P); top-K targets: the upper bound (see the module docstring)
        terms: dict[str, torch.Tensor] = {}
        if "ce" in self.weights:
            in_vocab = targets.token_ids >= 0
            nll = -logq.gather(-1, targets.token_ids.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, A, P)
            terms["ce"] = masked_weighted_mean(nll, w, mask & in_vocab)
        if "tv" in self.weights:
            terms["tv"] = masked_weighted_mean(tv, w, mask)
        if "kl" in self.weights:
            terms["kl"] = masked_weighted_mean(kl_term(logq, targets), w, mask)
        total = sum((self.weights[name] * value for name, value in terms.items()), logits.new_zeros(()))
        out: dict[str, torch.Tensor] = {}
        if confidence_logits is not None:
            bce = F.binary_cross_entropy_with_logits(
                confidence_logits.float(), (1.0 - tv).detach().clamp(0.0, 1.0), reduction="none"
            )
            out["confidence"] = masked_weighted_mean(bce, w, mask)
            total = total + self.confidence_weight * out["confidence"]
            out["confidence"] = out["confidence"].detach()
        out["loss"] = total
        out.update({name: value.detach() for name, value in terms.items()})
        with torch.no_grad():
            n = mask.sum()
            out["ce_oov_frac"] = ((targets.token_ids < 0) & mask).sum() / n.clamp_min(1)
            out["num_slots"] = n.to(torch.float32)
        return out
