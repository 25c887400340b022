"""The anchor-block attention mask: hand-built cases, flex == dense, and what a block can see in the model."""

from __future__ import annotations

import warnings

import torch

from dspark_train.model import DSparkDraft, preset_config
from dspark_train.model.masks import (
    anchor_block_mask,
    block_positions,
    flex_attend,
    predicted_positions,
    sdpa_attend,
)


def test_positions() -> None:
    anchors = torch.tensor([[2, 7]])
    assert block_positions(anchors, 3).tolist() == [[[2, 3, 4], [7, 8, 9]]]
    assert predicted_positions(anchors, 2).tolist() == [[[3, 4], [8, 9]]]


def test_mask_hand_built() -> None:
    # T = 5 context positions, two blocks of S = 2 anchored at 2 and 4.
    m = anchor_block_mask(torch.tensor([[2, 4]]), context_len=5, block_size=2)
    assert m.shape == (1, 1, 4, 5 + 4)
    x, o = True, False
    expected = [
        # context 0..4     | block 0 | block 1
        [x, x, o, o, o, x, x, o, o],  # block 0 (anchor 2), slot 0: context < 2
        [x, x, o, o, o, x, x, o, o],  # block 0, slot 1: same context, whole own block (bidirectional)
        [x, x, x, x, o, o, o, x, x],  # block 1 (anchor 4): context < 4, never block 0
        [x, x, x, x, o, o, o, x, x],
    ]
    assert m[0, 0].tolist() == expected


def test_mask_batch_rows_differ_and_anchor_zero_sees_only_its_block() -> None:
    m = anchor_block_mask(torch.tensor([[0], [3]]), context_len=4, block_size=2)
    assert m[0, 0, :, :4].sum() == 0 and m[0, 0, :, 4:].all()  # no context before position 0
    assert m[1, 0, :, :4].tolist() == [[True, True, True, False]] * 2


def test_flex_mask_mod_matches_dense_mask() -> None:
    torch.manual_seed(0)
    anchors = torch.tensor([[1, 4, 6], [2, 3, 5]])
    t, s = 10, 4
    q = torch.randn(2, 4, 3 * s, 8)
    k, v = torch.randn(2, 2, t + 3 * s, 8), torch.randn(2, 2, t + 3 * s, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = flex_attend(anchors, t, s, compile=False)(q, k, v)
    dense = sdpa_attend(anchor_block_mask(anchors, t, s))(q, k, v)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def _model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    c = preset_config("debug", draft_vocab_size=96)
    model = DSparkDraft(c)
    for p in model.parameters():  # make the heads non-trivial so every dependency shows up
        torch.nn.init.normal_(p, std=0.2)
    b, t = 1, 16
    ctx = torch.randn(b, t, c.fc_in_features)
    ids = torch.randint(0, c.target_vocab_size, (b, t))
    anchors = torch.tensor([[3, 9]])
    return model, ctx, ids, anchors


def test_block_sees_context_strictly_before_its_anchor_only() -> None:
    model, ctx, ids, anchors = _model_and_batch()
    base = model(ctx, ids, anchors).logits
    ctx2 = ctx.clone()
    ctx2[:, 9:] += 5.0  # positions >= the second anchor: invisible to both blocks
    torch.testing.assert_close(model(ctx2, ids, anchors).logits, base)
    ctx3 = ctx.clone()
    ctx3[:, 8] += 5.0  # position 8 < 9: visible to block 1 only
    out = model(ctx3, ids, anchors).logits
    torch.testing.assert_close(out[:, 0], base[:, 0])
    assert not torch.allclose(out[:, 1], base[:, 1])


def test_blocks_do_not_see_each_other() -> None:
    model, ctx, ids, anchors = _model_and_batch()
    base = model(ctx, ids, anchors).logits
    ids2 = ids.clone()
    ids2[0, 9] = (ids[0, 9] + 1) % model.config.target_vocab_size  # block 1's anchor token
    out = model(ctx, ids2, anchors).logits
    torch.testing.assert_close(out[:, 0], base[:, 0])  # block 0 unaffected
    assert not torch.allclose(out[:, 1], base[:, 1])


def test_tokens_after_the_anchor_reach_only_the_markov_head() -> None:
    model, ctx, ids, anchors = _model_and_batch()
    base = model(ctx, ids, anchors).logits  # (1, 2, P=3, D)
    ids2 = ids.clone()
    ids2[0, 4] = (ids[0, 4] + 1) % model.config.target_vocab_size  # x_{a+1} of block 0
    out = model(ctx, ids2, anchors).logits
    torch.testing.assert_close(out[:, 0, [0, 2]], base[:, 0, [0, 2]])  # slots 1 and 3 unchanged
    assert not torch.allclose(out[:, 0, 1], base[:, 0, 1])  # slot 2's Markov input is x_{a+1}
