"""Loss terms against hand computations: TV, position weights, masking, OOV tokens, KL, confidence BCE."""

from __future__ import annotations

import math

import pytest
import torch

from dspark_train.losses import (
    DSparkLoss,
    SlotTargets,
    gather_positions,
    masked_weighted_mean,
    position_weights,
    slot_targets,
    tv_distance,
)
from dspark_train.model.draft import DraftOutput
from schemas.recipe import LossConfig


def test_tv_hand_computed() -> None:
    q = torch.tensor([0.5, 0.3, 0.2])
    p = torch.tensor([0.2, 0.3, 0.4])  # sums to 0.9: 0.1 of target mass is outside the draft vocab
    assert math.isclose(float(tv_distance(q, p)), 1 - (0.2 + 0.3 + 0.2), rel_tol=1e-6)
    full = torch.tensor([0.1, 0.6, 0.3])
    assert math.isclose(float(tv_distance(q, full)), 0.5 * float((q - full).abs().sum()), rel_tol=1e-6)


def test_position_weights_and_weighted_mean() -> None:
    w = position_weights(3, gamma=2.0)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(-0.5), math.exp(-1.0)]))
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = (1 * 1 + w[1] * 2 + 1 * 4) / (1 + w[1] + 1)
    assert torch.isclose(masked_weighted_mean(values, w, mask), expected)
    zero = masked_weighted_mean(values, w, torch.zeros_like(mask))
    assert float(zero) == 0.0


def _targets(p: torch.Tensor, ids: list[int], mask: list[bool]) -> SlotTargets:
    return SlotTargets(
        probs=p.view(1, 1, *p.shape),
        token_ids=torch.tensor(ids).view(1, 1, -1),
        greedy_ids=None,
        mask=torch.tensor(mask).view(1, 1, -1),
    )


def test_loss_terms_hand_computed() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.1, 0.1, 0.8]])).view(1, 1, 3, 3)
    p = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.25, 0.25], [0.3, 0.3, 0.4]])
    targets = _targets(p, ids=[0, -1, 2], mask=[True, True, False])  # slot 2 OOV, slot 3 masked out
    gamma = 4.0
    w = [1.0, math.exp(-1 / gamma)]
    loss = DSparkLoss({"ce": 0.1, "tv": 0.9, "kl": 0.5}, confidence_weight=0.0, gamma=gamma)
    out = loss(logits, targets)
    assert math.isclose(float(out["ce"]), -math.log(0.5), rel_tol=1e-5)  # only slot 1 is in-vocab and valid
    tv = [1 - (0.2 + 0.3 + 0.2), 1 - (0.25 + 0.25 + 0.25)]
    assert math.isclose(float(out["tv"]), (w[0] * tv[0] + w[1] * tv[1]) / (w[0] + w[1]), rel_tol=1e-5)
    kl1 = sum(pi / 0.9 * math.log(pi / 0.9 / qi) for pi, qi in zip([0.2, 0.3, 0.4], [0.5, 0.3, 0.2], strict=True))
    kl2 = sum(pi * math.log(pi / qi) for pi, qi in zip([0.5, 0.25, 0.25], [0.25, 0.25, 0.5], strict=True))
    assert math.isclose(float(out["kl"]), (w[0] * kl1 + w[1] * kl2) / (w[0] + w[1]), rel_tol=1e-5)
    total = 0.1 * out["ce"] + 0.9 * out["tv"] + 0.5 * out["kl"]
    assert torch.isclose(out["loss"], total)
    assert math.isclose(float(out["ce_oov_frac"]), 0.5) and float(out["num_slots"]) == 2


def test_confidence_bce_targets_detached_acceptance() -> None:
    logits = torch.randn(1, 1, 2, 4, requires_grad=True)
    p = torch.softmax(torch.randn(2, 4), -1)
    conf = torch.zeros(1, 1, 2, requires_grad=True)  # sigmoid = 0.5
    out = DSparkLoss({}, confidence_weight=1.0)(logits, _targets(p, [0, 1], [True, True]), conf)
    accept = 1 - tv_distance(torch.softmax(logits.detach(), -1), p.view(1, 1, 2, 4))
    bce = -(accept * math.log(0.5) + (1 - accept) * math.log(0.5))
    w = position_weights(2, 4.0)
    assert torch.isclose(out["confidence"], (bce.flatten() * w).sum() / w.sum())
    out["loss"].backward()
    assert logits.grad is None or torch.count_nonzero(logits.grad) == 0  # the target is detached
    assert conf.grad is not None and torch.count_nonzero(conf.grad) > 0


def test_from_config_and_unknown_terms() -> None:
    loss = DSparkLoss.from_config(LossConfig())
    assert dict(loss.weights) == {"ce": 0.1, "tv": 0.9} and loss.gamma == 4.0
    with pytest.raises(ValueError, match="unknown loss terms"):
        DSparkLoss({"mse": 1.0})


def test_slot_targets_gathers_previous_row_for_probs() -> None:
    b, t, d = 1, 6, 3
    next_probs = torch.arange(t, dtype=torch.float32).view(1, t, 1).expand(b, t, d)  # row t holds value t
    input_ids = torch.tensor([[0, 1, 2, 3, 4, 0]])
    loss_mask = torch.tensor([[False, False, True, True, False, True]])
    t2d = torch.tensor([True, False, True, True, False])  # target 0,2,3 -> draft 0,1,2
    positions = torch.tensor([[[2, 3, 4]]])
    out = DraftOutput(torch.zeros(1, 1, 3, d), None, positions, torch.ones(1, 1, 3, dtype=torch.bool))
    st = slot_targets(out, input_ids, loss_mask, next_probs, t2d, next_greedy=torch.arange(t).view(1, t))
    assert st.probs[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]  # position p uses the target's row p-1
    assert st.token_ids.tolist() == [[[1, 2, -1]]]  # ids 2, 3 -> draft 1, 2; id 4 outside the draft vocab
    assert st.mask.tolist() == [[[True, True, False]]]
    assert st.greedy_ids.tolist() == [[[1, 2, 3]]]
    assert gather_positions(input_ids, torch.tensor([[[9]]])).item() == 0  # clamped to T-1
