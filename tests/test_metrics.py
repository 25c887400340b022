"""Validation metrics on hand-made blocks: per-position acceptance, accepted length, rates, accumulation."""

from __future__ import annotations

import math

import torch

from dspark_train.losses import SlotTargets
from dspark_train.metrics import DraftMetrics


def _one_hot_logits(ids: list[list[int]], d: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), d).float().mul(20.0).unsqueeze(0)  # (1, A, P, D)


def _case():
    # 3 blocks x P=3 slots, D=4. Target greedy ids per slot; draft argmax chosen to match a known pattern.
    greedy = [[0, 1, 2], [0, 1, 2], [3, 3, -1]]  # -1: target argmax outside the draft vocab
    draft = [[0, 1, 0], [0, 2, 2], [1, 3, 0]]  # matches: [T, T, F], [T, F, T], [F, T, F]
    mask = [[True, True, True], [True, True, True], [True, True, False]]
    probs = torch.full((1, 3, 3, 4), 0.25)
    targets = SlotTargets(
        probs=probs,
        token_ids=torch.zeros(1, 3, 3, dtype=torch.long),
        greedy_ids=torch.tensor(greedy).unsqueeze(0),
        mask=torch.tensor(mask).unsqueeze(0),
    )
    return _one_hot_logits(draft, 4), targets


def test_hand_made_blocks() -> None:
    logits, targets = _case()
    conf = torch.zeros(1, 3, 3)  # sigmoid 0.5
    m = DraftMetrics(3)
    m.update(logits, targets, conf)
    r = m.compute()
    assert r["acc_pos_1"] == 2 / 3 and r["acc_pos_2"] == 2 / 3 and r["acc_pos_3"] == 1 / 2
    assert math.isclose(r["full_accuracy"], 5 / 8)
    # leading runs: 2, 1, 0 -> mean 1, plus the bonus token
    assert math.isclose(r["accepted_length"], 2.0)
    assert math.isclose(r["accepted_length_product"], 1 + 2 / 3 + 4 / 9 + 2 / 9)
    # q is (nearly) one-hot, p uniform: 1 - TV = sum(min(q, 0.25)) = 0.25 on every slot
    assert math.isclose(r["acceptance_rate"], 0.25, rel_tol=1e-4)
    assert math.isclose(
        r["accepted_length_analytic"], 1 + (2 * (0.25 + 0.25**2 + 0.25**3) + 0.25 + 0.25**2) / 3, rel_tol=1e-3
    )
    assert math.isclose(r["confidence_abs_error"], 0.25, rel_tol=1e-4)
    assert r["num_blocks"] == 3 and r["num_slots"] == 8


def test_accepted_length_is_the_leading_run_on_random_blocks() -> None:
    """The seed card's Avg Length is the empirical leading run (its 2.748 lies between the product form's
    2.409 and the sum's 4.173 of its own per-position figures). On 200 seeded random blocks, with every
    figure recomputed here slot by slot: `accepted_length` is 1 + the mean leading run of matches,
    `acc_pos_k` the match rate at slot k, and `accepted_length_product` the independence form, which differs."""
    gen = torch.Generator().manual_seed(7)
    blocks, slots, d = 200, 7, 3
    greedy = torch.randint(0, d, (blocks, slots), generator=gen)
    quality = torch.rand(blocks, 1, generator=gen)  # easy and hard blocks: acceptance is correlated within one
    draft = torch.where(torch.rand(blocks, slots, generator=gen) < quality, greedy, (greedy + 1) % d)
    targets = SlotTargets(torch.full((1, blocks, slots, d), 1 / d), torch.zeros(1, blocks, slots, dtype=torch.long),
                          greedy.unsqueeze(0), torch.ones(1, blocks, slots, dtype=torch.bool))
    m = DraftMetrics(slots)
    m.update(_one_hot_logits(draft.tolist(), d), targets)
    r = m.compute()
    matches = (draft == greedy).tolist()
    runs = []
    for row in matches:
        run = 0
        while run < slots and row[run]:
            run += 1
        runs.append(run)
    rates = [sum(row[k] for row in matches) / blocks for k in range(slots)]
    product = 1 + sum(math.prod(rates[: k + 1]) for k in range(slots))
    assert math.isclose(r["accepted_length"], 1 + sum(runs) / blocks)
    assert all(math.isclose(r[f"acc_pos_{k + 1}"], rates[k]) for k in range(slots))
    assert math.isclose(r["accepted_length_product"], product, rel_tol=1e-6)
    assert r["accepted_length"] > product + 0.1  # correlated acceptance: the two definitions are told apart


def test_accumulation_equals_one_pass_and_state_sums() -> None:
    logits, targets = _case()
    whole = DraftMetrics(3)
    whole.update(logits, targets)
    a, b = DraftMetrics(3), DraftMetrics(3)

    def part(sl: slice) -> tuple[torch.Tensor, SlotTargets]:
        return logits[:, sl], SlotTargets(
            targets.probs[:, sl], targets.token_ids[:, sl], targets.greedy_ids[:, sl], targets.mask[:, sl]
        )

    a.update(*part(slice(0, 1)))
    b.update(*part(slice(1, 3)))
    a.state += b.state  # what all_reduce(SUM) does across ranks
    assert a.compute() == whole.compute()
    a.all_reduce()  # no process group: a no-op
    whole.reset()
    assert whole.compute()["num_blocks"] == 0
