"""Twenty optimizer steps on one synthetic batch must drive the loss down and acceptance up."""

from __future__ import annotations

import torch

from dspark_train.losses import DSparkLoss, slot_targets
from dspark_train.metrics import DraftMetrics
from dspark_train.model import DSparkDraft, preset_config


def test_tiny_overfit() -> None:
    torch.manual_seed(0)
    c = preset_config("debug")
    v, d = c.target_vocab_size, c.draft_vocab_size
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[:d] = True  # draft vocab = the first 64 target ids
    # Frozen target weights with realistic scale (logits of a few nats from a unit-RMS hidden state).
    model = DSparkDraft(c, torch.randn(v, c.hidden_size) * 0.5, torch.randn(v, c.hidden_size) * 0.5, t2d)

    # Documents following a fixed bigram rule inside the draft vocab; the "target" is that rule, smoothed.
    b, t = 2, 24
    ids = torch.empty(b, t, dtype=torch.long)
    ids[:, 0] = torch.tensor([3, 17])
    for i in range(1, t):
        ids[:, i] = (5 * ids[:, i - 1] + 7) % d
    next_ids = (5 * ids + 7) % d  # the token after each position
    next_probs = torch.full((b, t, d), 0.05 / d)
    next_probs.scatter_(-1, next_ids.unsqueeze(-1), 0.95 + 0.05 / d)
    ctx = torch.randn(b, t, c.fc_in_features)
    loss_mask = torch.ones(b, t, dtype=torch.bool)
    anchors = torch.tensor([[1, 5, 9, 13, 17], [2, 6, 10, 14, 18]])

    loss_fn = DSparkLoss({"ce": 0.1, "tv": 0.9}, confidence_weight=1.0, gamma=4.0)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2)

    def step() -> dict[str, torch.Tensor]:
        out = model(ctx, ids, anchors)
        targets = slot_targets(out, ids, loss_mask, next_probs, t2d)
        return loss_fn(out.logits, targets, out.confidence_logits), out, targets

    def acceptance() -> float:
        with torch.no_grad():
            _, out, targets = step()
        m = DraftMetrics(c.num_draft_tokens)
        m.update(out.logits, targets, out.confidence_logits)
        return m.compute()["acceptance_rate"]

    first = acceptance()
    losses = []
    for _ in range(20):
        parts, _, _ = step()
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert acceptance() > first + 0.5
