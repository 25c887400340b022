"""Does the trainer's "mean accepted length" measure what speculative decoding gets? Checked on the same data.

On the target's greedy continuation of a prompt, the trainer's validation metric (`DSparkDraft.forward` +
`DraftMetrics`: leading run of slots whose draft argmax equals the target's argmax, Markov head fed the
true previous token) and greedy speculative decoding (`speculate`, Markov head fed the draft's own
previous token) agree anchor by anchor: while the run continues, the true previous token *is* the draft's
previous token, so the run length at an anchor equals the tokens vLLM would accept there. The two
numbers differ only in *which* anchors they average over:
- speculative decoding visits the anchors its own acceptance leads to (after accepting n tokens, the next
  anchor is n + 1 further on), so a long run skips the positions inside it;
- the trainer samples anchors uniformly over the assistant tokens.
Averaging over the visited anchors is a tokens-per-step ratio (a harmonic-type mean), averaging uniformly
is an arithmetic mean over positions; with acceptance that varies along the text the uniform one is
larger. This module computes, per prompt set: speculative decoding's counts, the trainer metric at the
visited anchors (must match within numerical noise) and at all anchors (the trainer's sampling), so the
gap is shown, not guessed. Only steps whose K draft positions fit inside the generated text are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dspark_train.eval.acceptance import AcceptanceCounts
from dspark_train.eval.speculative import SamplingParams, speculate
from dspark_train.eval.target import HfTarget
from dspark_train.losses import slot_targets
from dspark_train.metrics import DraftMetrics
from dspark_train.model import DSparkDraft


@dataclass
class RunStats:
    """Trainer-metric figures over a set of anchors."""

    metrics: DraftMetrics
    runs: list[int]

    def to_json(self, k: int) -> dict[str, Any]:
        m = self.metrics.compute()
        n = max(len(self.runs), 1)
        return {
            "accepted_length": m["accepted_length"],
            "num_blocks": len(self.runs),
            "per_position": [sum(r > i for r in self.runs) / n for i in range(k)],  # cumulative, like vLLM
            "acc_pos": [m[f"acc_pos_{i}"] for i in range(1, k + 1)],  # the trainer's non-cumulative figure
        }


@torch.no_grad()
def trainer_runs(draft: DSparkDraft, seq: list[int], prompt_len: int, aux: torch.Tensor, logits: torch.Tensor,
                 anchors: list[int], stats: RunStats) -> list[int]:
    """Run the trainer's forward + metric at `anchors` of one sequence; returns each anchor's run length."""
    if not anchors:
        return []
    c = draft.config
    ids = torch.tensor([seq])
    out = draft.forward(aux.unsqueeze(0), ids, torch.tensor([anchors]))
    t2d = draft.t2d.cpu()
    draft_index = torch.where(t2d, torch.cumsum(t2d.long(), 0) - 1, -1)
    next_greedy = draft_index[logits.argmax(dim=-1)].unsqueeze(0)  # (1, T) draft id of the target's argmax
    next_probs = torch.softmax(logits[:, t2d], dim=-1).unsqueeze(0)  # (1, T, D) on the draft vocab
    loss_mask = (torch.arange(len(seq)) >= prompt_len).unsqueeze(0)
    targets = slot_targets(out, ids, loss_mask, next_probs, t2d, next_greedy)
    stats.metrics.update(out.logits, targets, out.confidence_logits)
    correct = (out.logits.argmax(dim=-1) == targets.greedy_ids) & targets.mask  # (1, A, P)
    runs = correct[0, :, : c.num_draft_tokens].long().cumprod(dim=-1).sum(dim=-1).tolist()
    stats.runs.extend(runs)
    return runs


def consistency_for_set(draft: DSparkDraft, target: HfTarget, conversations_ids: list[list[int]], *, k: int,
                        max_new_tokens: int, eos_ids: set[int]) -> dict[str, Any]:
    """Speculative decoding vs the trainer metric on the greedy continuations of one prompt set."""
    p = draft.config.num_draft_tokens
    if k != p:
        raise ValueError(f"the consistency check compares K={k} drafts with the trainer's {p} slots; use K={p}")
    spec = AcceptanceCounts.empty(k)
    visited, uniform = RunStats(DraftMetrics(p), []), RunStats(DraftMetrics(p), [])
    agree = total = 0
    for i, ids in enumerate(conversations_ids):
        gen = speculate(target, draft, ids, k=k, max_new_tokens=max_new_tokens, params=SamplingParams(),
                        eos_ids=eos_ids, generator=torch.Generator().manual_seed(i))
        seq = ids + gen.tokens
        target.reset()
        full = target.forward(seq)
        inside = [(a, n) for a, n in zip(gen.anchors, gen.accepted, strict=True) if a + k < len(seq)]
        for _, n in inside:
            spec.observe(k, n)
        runs = trainer_runs(draft, seq, len(ids), full.aux_hidden, full.logits, [a for a, _ in inside], visited)
        agree += sum(int(r == n) for r, (_, n) in zip(runs, inside, strict=True))
        total += len(runs)
        all_anchors = list(range(len(ids), len(seq) - k))
        trainer_runs(draft, seq, len(ids), full.aux_hidden, full.logits, all_anchors, uniform)
    return {
        "speculative_decoding": spec.to_json(),
        "trainer_metric_visited_anchors": visited.to_json(k),
        "trainer_metric_all_anchors": uniform.to_json(k),
        "anchor_agreement": agree / max(total, 1),
    }
