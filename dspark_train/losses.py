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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dspark_train.model.draft import DraftOutput
from schemas.recipe import LossConfig

LOSS_TERMS = ("ce", "tv", "kl")


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
    `target_probs`); slot predicting position p uses row p-1. `next_greedy` (B, T) likewise (draft ids, -1
    outside). `loss_mask` (B, T): True where the token is an assistant token. `t2d`: bool (V,).
    """
    pos = out.positions  # (B, A, P)
    draft_index = torch.where(t2d, torch.cumsum(t2d.long(), 0) - 1, -1)  # (V,) target id -> draft id
    true_ids = gather_positions(input_ids, pos)  # (B, A, P) target ids
    mask = out.valid & gather_positions(loss_mask, pos)
    return SlotTargets(
        probs=gather_positions(next_probs, pos - 1),
        token_ids=draft_index[true_ids],
        greedy_ids=gather_positions(next_greedy, pos - 1) if next_greedy is not None else None,
        mask=mask,
    )


@dataclass
class DSparkLoss:
    """Build from the recipe's `loss` section: `DSparkLoss.from_config(recipe.loss)`."""

    weights: Mapping[str, float] = field(default_factory=lambda: {"ce": 0.1, "tv": 0.9})
    confidence_weight: float = 1.0
    gamma: float = 4.0

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
        tv = tv_distance(q, targets.probs)  # (B, A, P)
        terms: dict[str, torch.Tensor] = {}
        if "ce" in self.weights:
            in_vocab = targets.token_ids >= 0
            nll = -logq.gather(-1, targets.token_ids.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, A, P)
            terms["ce"] = masked_weighted_mean(nll, w, mask & in_vocab)
        if "tv" in self.weights:
            terms["tv"] = masked_weighted_mean(tv, w, mask)
        if "kl" in self.weights:
            p_mass = targets.probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            p_hat = targets.probs / p_mass
            kl = (p_hat * (torch.log(p_hat.clamp_min(1e-30)) - logq)).sum(dim=-1)  # (B, A, P)
            terms["kl"] = masked_weighted_mean(kl, w, mask)
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
