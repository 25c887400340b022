"""Speculative decoding simulated exactly: the draft proposes from the target's real hidden states, the
target verifies, and the counters are the ones vLLM keeps.

One step, as in vLLM's DFlash/DSpark proposers (v1/spec_decode/dflash.py, v1/worker/gpu/spec_decode/dspark):
context = aux hidden states of every verified token, anchor = the token the target just produced (the
bonus token), the draft proposes K tokens for the positions after it; the target runs
[anchor, d_1..d_K] and accepts a prefix:
- greedy (temperature 0): d_i is accepted while it equals the target's argmax; the bonus is the argmax
  after the accepted prefix.
- sampling (temperature T, top_p): standard rejection sampling. Target probabilities use temperature
  then top-p (vLLM's order); the draft samples softmax(logits / T) with no top-p (vLLM's probabilistic
  draft sampling); d_i is accepted with probability min(1, p(d_i) / q(d_i)), else the step ends with a
  token drawn from max(p - q, 0). With `draft_sampling="greedy"` the draft proposes its argmax and q is
  one-hot (vLLM's default draft_sample_method).
Every step counts as one draft of K tokens, even when max_new_tokens or EOS truncates what is emitted,
which is how vLLM's scheduler counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from dspark_train.eval.acceptance import AcceptanceCounts
from dspark_train.eval.target import HfTarget
from dspark_train.model import DSparkDraft

NUM_BINS = 10


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    draft_sampling: Literal["probabilistic", "greedy"] = "probabilistic"

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Calibration:
    """Confidence head vs what happened, per draft position, over positions the verifier reached.

    A position is reached when every earlier draft token of its step was accepted. `observed` is the
    acceptance of reached positions (conditional acceptance); `analytic` is 1 - TV(q, p) at temperature 1,
    the quantity the head is trained toward. Bins hold (sum predicted, sum accepted, count) by predicted value.
    """

    predicted: list[float]
    observed: list[float]
    analytic: list[float]
    reached: list[int]
    bins: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(NUM_BINS)])

    @classmethod
    def empty(cls, k: int) -> Calibration:
        return cls([0.0] * k, [0.0] * k, [0.0] * k, [0] * k)

    def observe(self, confidence: list[float] | None, num_accepted: int, analytic: list[float]) -> None:
        for i in range(min(num_accepted + 1, len(self.reached))):
            accepted = 1.0 if i < num_accepted else 0.0
            self.reached[i] += 1
            self.observed[i] += accepted
            self.analytic[i] += analytic[i]
            if confidence is not None:
                c = confidence[i]
                self.predicted[i] += c
                b = self.bins[min(int(c * NUM_BINS), NUM_BINS - 1)]
                b[0], b[1], b[2] = b[0] + c, b[1] + accepted, b[2] + 1

    def merge(self, other: Calibration) -> Calibration:
        add = lambda a, b: [x + y for x, y in zip(a, b, strict=True)]  # noqa: E731
        return Calibration(
            add(self.predicted, other.predicted), add(self.observed, other.observed),
            add(self.analytic, other.analytic), add(self.reached, other.reached),
            [add(a, b) for a, b in zip(self.bins, other.bins, strict=True)],
        )

    def to_json(self, has_confidence: bool) -> dict:
        n = [max(r, 1) for r in self.reached]
        out = {
            "reached": self.reached,
            "observed": [o / c for o, c in zip(self.observed, n, strict=True)],
            "analytic": [a / c for a, c in zip(self.analytic, n, strict=True)],
        }
        if has_confidence:
            out["predicted"] = [p / c for p, c in zip(self.predicted, n, strict=True)]
            out["bins"] = [
                {"predicted": b[0] / b[2], "observed": b[1] / b[2], "count": int(b[2])} for b in self.bins if b[2]
            ]
        return out


@dataclass
class Generation:
    tokens: list[int]
    counts: AcceptanceCounts
    calibration: Calibration
    anchors: list[int] = field(default_factory=list)  # absolute position of each step's anchor token
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted at each step


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(..., V) logits -> probabilities after temperature, then nucleus filtering, as vLLM computes them.

    vLLM (`apply_top_k_top_p_pytorch`) sorts ascending and drops every token whose ascending cumulative
    probability is <= 1 - top_p, always keeping the most likely one.
    """
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)
        drop = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[..., -1] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.softmax(logits, dim=-1)


def _sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def _to_target_vocab(q: torch.Tensor, draft_to_target: torch.Tensor, vocab: int) -> torch.Tensor:
    """(K, D) draft-vocab probabilities -> (K, V) over the target vocab (zero outside the draft vocab)."""
    out = torch.zeros(q.shape[0], vocab, dtype=q.dtype)
    out[:, draft_to_target] = q
    return out


def _accept(
    logits: torch.Tensor, drafts: list[int], q: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[int, int]:
    """(number of draft tokens accepted, next token) for one verification step."""
    if params.greedy:
        best = logits.argmax(dim=-1).tolist()
        a = 0
        while a < len(drafts) and drafts[a] == best[a]:
            a += 1
        return a, best[a]
    p = sampling_probs(logits, params.temperature, params.top_p)  # (K+1, V)
    for i, d in enumerate(drafts):
        ratio = p[i, d] / q[i, d].clamp_min(1e-30)
        if torch.rand((), generator=generator) < ratio:
            continue
        residual = (p[i] - q[i]).clamp_min(0.0)
        return i, _sample(residual if residual.sum() > 0 else p[i], generator)
    return len(drafts), _sample(p[len(drafts)], generator)


@torch.no_grad()
def speculate(
    target: HfTarget,
    draft: DSparkDraft,
    prompt_ids: list[int],
    *,
    k: int,
    max_new_tokens: int,
    params: SamplingParams,
    eos_ids: set[int],
    generator: torch.Generator,
) -> Generation:
    """Generate up to `max_new_tokens` after `prompt_ids` with speculative decoding; count every step."""
    target.reset()
    counts, calib = AcceptanceCounts.empty(k), Calibration.empty(k)
    vocab = draft.config.target_vocab_size
    draft_to_target = torch.arange(draft.config.draft_vocab_size) + draft.d2t.cpu()
    dev = next(draft.parameters()).device

    step = target.forward(prompt_ids)
    context = step.aux_hidden  # (T, F): hidden states of every token the target has verified
    if params.greedy:
        nxt = int(step.logits[-1].argmax())
    else:
        nxt = _sample(sampling_probs(step.logits[-1], params.temperature, params.top_p), generator)
    tokens = [nxt]
    anchors: list[int] = []
    steps: list[int] = []
    done = nxt in eos_ids or len(tokens) >= max_new_tokens
    while not done:
        draft_temp = 0.0 if params.greedy or params.draft_sampling == "greedy" else params.temperature
        prop = draft.propose(
            context.unsqueeze(0).to(dev), torch.tensor([nxt], device=dev), num_tokens=k,
            temperature=draft_temp, generator=generator,
        )
        drafts = prop.token_ids[0].tolist()
        if draft_temp > 0:
            q = _to_target_vocab(prop.probs[0].cpu(), draft_to_target, vocab)
        else:
            q = torch.zeros(k, vocab).scatter_(1, torch.tensor(drafts).unsqueeze(1), 1.0)
        base = target.length
        ver = target.forward([nxt, *drafts])
        accepted, nxt = _accept(ver.logits, drafts, q, params, generator)
        counts.observe(k, accepted)
        anchors.append(base)
        steps.append(accepted)
        q1 = _to_target_vocab(torch.softmax(prop.logits[0].cpu(), dim=-1), draft_to_target, vocab)
        p1 = torch.softmax(ver.logits[:k], dim=-1)
        analytic = torch.minimum(p1, q1).sum(dim=-1).tolist()  # 1 - TV(q, p) per position
        conf = prop.confidence[0].tolist() if prop.confidence is not None else None
        calib.observe(conf, accepted, analytic)
        context = torch.cat([context, ver.aux_hidden[: accepted + 1]], dim=0)
        target.truncate(base + accepted + 1)
        for tok in [*drafts[:accepted], nxt]:
            tokens.append(tok)
            if tok in eos_ids or len(tokens) >= max_new_tokens:
                done = True
                break
    return Generation(tokens, counts, calib, anchors, steps)
