"""Validation anchors do not move with the run seed (paired codec / seed comparisons); training ones do."""

from __future__ import annotations

import torch

from dspark_train.data import LoaderConfig, SyntheticHiddenSource, eval_loader
from dspark_train.data.loader import _BatchMaker


def test_validation_anchors_are_the_same_for_every_seed() -> None:
    src = SyntheticHiddenSource(12, layer_ids=[1, 3, 6], hidden_size=16, vocab_size=64, min_len=40, max_len=80, seed=2)
    indices = list(range(len(src)))
    val, train = {}, {}
    for seed in (0, 1):
        cfg = LoaderConfig(seed=seed, batch_size=3, max_anchors=4, span=7, aux_slots=(0, 1), last_slot=2,
                           num_workers=0, prefetch=0)
        loader = eval_loader(src, indices, cfg)
        val[seed] = [b.anchors.clone() for b in loader]
        loader.close()
        train[seed] = _BatchMaker(src, cfg, fallback=0)(indices, 0).anchors  # epoch 0 of training
    assert len(val[0]) > 1 and all(torch.equal(a, b) for a, b in zip(val[0], val[1], strict=True))
    assert any(int((a > 0).sum()) for a in val[0])  # real anchors were compared
    assert not torch.equal(train[0], train[1])  # training anchors still follow the seed
