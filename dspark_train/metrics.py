"""Validation metrics of a draft, accumulated as sums + counts (one tensor, one all-reduce across ranks).

Definitions (per draft position k = 1..P of a block, over slots whose anchor is valid and whose token is
loss-masked):
- `acc_pos_k` (the card's "per-position acceptance, positions 1-7"): P(greedy draft argmax at slot k ==
  target argmax at slot k), each slot scored on the *true* prefix (teacher forcing), independently of
  whether earlier slots matched. Not cumulative: it falls slowly (0.711 ... 0.320 in the seed card).
- `full_accuracy`: the same match rate over all slots (count-weighted mean of acc_pos_k: 0.454 in the
  card, vs 0.4533 for the plain mean of its seven figures, later positions having slightly fewer slots).
- `accepted_length` (the card's "mean accepted length"): 1 + mean over blocks of the leading run of
  matching slots, i.e. the tokens one greedy verification step would confirm (the +1 is the bonus token,
  as in vLLM's "Avg Length"). The run keeps the correlation between slots: with the card's per-position
  figures, the product form 1 + sum_k prod_{i<=k} acc_i gives only 2.409 and the fully nested bound
  1 + sum_k acc_k gives 4.173; the card's 2.748 lies between, so it is the empirical run, not the product.
  The product form is reported as `accepted_length_product` for comparison.
- `accepted_length_analytic`: 1 + mean over blocks of sum_k prod_{i<=k} (1 - TV_i): the expected length
  under rejection sampling at temperature 1.
- `acceptance_rate` (the card's "mean acceptance rate"): mean over slots of 1 - TV(q, p).
- `confidence_abs_error`: mean over slots of |sigmoid(c_k) - (1 - TV_k)|.
With top-K targets (no last layer; losses.py) the greedy figures (acc_pos_k, full_accuracy,
accepted_length, accepted_length_product) are exact; TV is its upper bound, so the TV figures
(acceptance_rate, accepted_length_analytic, confidence_abs_error) are lower bounds on acceptance, and two
more figures say how far off they can be: `tv_tail_bound` (mean over slots of the most the tail can
lower TV) and `target_tail_mass` (mean over slots of the target's mass outside the top-K).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dspark_train.losses import SlotTargets, tv_bounds


class DraftMetrics:
    """`update` per batch, `all_reduce` once (DDP), then `compute`. State: sums and counts, float64."""

    ROWS = 7  # per-position rows of the state (see __init__)

    def __init__(self, num_draft_tokens: int, device: torch.device | str | None = None) -> None:
        self.p = num_draft_tokens
        # rows: correct, slots, accept_rate_sum, conf_abs_err_sum, conf_slots, tv_bound_sum, tail_mass_sum
        # (each (P,)); tail: run_len_sum, analytic_len_sum, blocks, top-K batches seen
        self.state = torch.zeros(self.ROWS * self.p + 4, dtype=torch.float64, device=device)

    def reset(self) -> None:
        self.state.zero_()

    def _rows(self) -> torch.Tensor:
        return self.state[: self.ROWS * self.p].view(self.ROWS, self.p)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: SlotTargets, confidence_logits: torch.Tensor | None = None) -> None:
        """logits (B, A, P, D) draft logits (Markov bias included, teacher forced); targets from `slot_targets`."""
        mask = targets.mask  # (B, A, P)
        m = mask.to(torch.float64)
        q = torch.softmax(logits.float(), dim=-1)
        tv, bound = tv_bounds(q, targets)
        accept = (1.0 - tv).to(torch.float64)  # (B, A, P)
        target_greedy = targets.greedy_ids if targets.greedy_ids is not None else targets.probs.argmax(dim=-1)
        correct = (logits.argmax(dim=-1) == target_greedy) & (target_greedy >= 0) & mask  # (B, A, P)

        rows = self._rows()
        dims = tuple(range(mask.dim() - 1))
        rows[0] += correct.to(torch.float64).sum(dim=dims)
        rows[1] += m.sum(dim=dims)
        rows[2] += (accept * m).sum(dim=dims)
        if confidence_logits is not None:
            conf = torch.sigmoid(confidence_logits.float()).to(torch.float64)
            rows[3] += ((conf - accept).abs() * m).sum(dim=dims)
            rows[4] += m.sum(dim=dims)
        if targets.tail is not None:
            rows[5] += (bound.to(torch.float64) * m).sum(dim=dims)
            rows[6] += (targets.tail.to(torch.float64) * m).sum(dim=dims)

        blocks = mask.any(dim=-1)  # (B, A): blocks with at least one scored slot
        run = correct.to(torch.float64).cumprod(dim=-1).sum(dim=-1)  # leading matches per block
        analytic = (accept * m).cumprod(dim=-1).sum(dim=-1)
        tail = self.state[self.ROWS * self.p :]
        tail[0] += (run * blocks).sum()
        tail[1] += (analytic * blocks).sum()
        tail[2] += blocks.sum()
        tail[3] += float(targets.tail is not None)

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum the state over ranks (no-op when torch.distributed is not initialised)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.state, op=dist.ReduceOp.SUM, group=group)

    def compute(self) -> dict[str, float]:
        rows = self._rows().cpu()
        correct, slots, accept, conf_err, conf_slots, tv_bound, tail_mass = rows
        run, analytic, blocks, topk_batches = self.state[self.ROWS * self.p :].cpu().tolist()
        acc = correct / slots.clamp_min(1)
        out: dict[str, float] = {
            "accepted_length": 1.0 + run / max(blocks, 1.0),
            "full_accuracy": float(correct.sum() / slots.sum().clamp_min(1)),
            "acceptance_rate": float(accept.sum() / slots.sum().clamp_min(1)),
            "accepted_length_product": 1.0 + float(acc.cumprod(0).sum()),
            "accepted_length_analytic": 1.0 + analytic / max(blocks, 1.0),
            "num_blocks": blocks,
            "num_slots": float(slots.sum()),
        }
        if conf_slots.sum() > 0:
            out["confidence_abs_error"] = float(conf_err.sum() / conf_slots.sum())
        if topk_batches > 0:
            out["tv_tail_bound"] = float(tv_bound.sum() / slots.sum().clamp_min(1))
            out["target_tail_mass"] = float(tail_mass.sum() / slots.sum().clamp_min(1))
        for k in range(self.p):
            out[f"acc_pos_{k + 1}"] = float(acc[k])
            out[f"acceptance_rate_pos_{k + 1}"] = float(accept[k] / slots[k].clamp_min(1))
        return out
