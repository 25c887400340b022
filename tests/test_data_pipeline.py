"""The training data pipeline: split, sampler purity/disjointness, anchors, collate, loader resume."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dspark_train.data import (
    LoaderConfig,
    SyntheticHiddenSource,
    TrainLoader,
    anchor_span,
    candidate_anchors,
    epoch_batches,
    eval_batches,
    eval_loader,
    sample_anchors,
    split_indices,
)


def _source(n: int = 40, **kw) -> SyntheticHiddenSource:
    return SyntheticHiddenSource(n, layer_ids=[1, 3, 6], hidden_size=8, vocab_size=50, min_len=12, max_len=40, **kw)


def _cfg(**kw) -> LoaderConfig:
    base = dict(seed=3, batch_size=2, max_anchors=4, span=3, aux_slots=(0, 1), last_slot=2, num_workers=2, prefetch=3)
    base.update(kw)
    return LoaderConfig(**base)


def test_split_is_by_id_and_stable() -> None:
    ids = [f"s{i}" for i in range(2000)]
    train, val = split_indices(ids, 0.1)
    assert sorted(train + val) == list(range(2000)) and not set(train) & set(val)
    assert 150 < len(val) < 250
    # Reordering or growing the dataset moves no sample across the split.
    rev = list(reversed(ids))
    _, val_rev = split_indices(rev, 0.1)
    assert {rev[i] for i in val_rev} == {ids[i] for i in val}
    _, val_more = split_indices(ids + [f"x{i}" for i in range(100)], 0.1)
    assert {ids[i] for i in val} <= {(ids + [f"x{i}" for i in range(100)])[i] for i in val_more}
    # A tiny dataset still gets one validation sample; fraction 0 gets none.
    assert len(split_indices(["a", "b", "c"], 0.01)[1]) == 1
    assert split_indices(ids, 0.0)[1] == []


def test_sampler_is_pure_disjoint_and_equal() -> None:
    ids = [f"d{i}" for i in range(103)]
    lengths = [(i * 37) % 91 + 5 for i in range(103)]
    idx = list(range(103))
    kw = dict(seed=1, epoch=2, batch_size=3)
    per_rank = [epoch_batches(idx, ids, lengths, world_size=4, rank=r, **kw) for r in range(4)]
    again = [epoch_batches(idx, ids, lengths, world_size=4, rank=r, **kw) for r in range(4)]
    assert per_rank == again  # pure
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == 103 // 12  # equal counts
    assert all(len(b) == 3 for batches in per_rank for b in batches)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (103 // 12) * 12  # disjoint over ranks
    # Another epoch, another order; another seed, another order.
    assert epoch_batches(idx, ids, lengths, seed=1, epoch=3, batch_size=3) != epoch_batches(
        idx, ids, lengths, seed=1, epoch=2, batch_size=3
    )
    assert epoch_batches(idx, ids, lengths, seed=2, epoch=2, batch_size=3) != epoch_batches(
        idx, ids, lengths, seed=1, epoch=2, batch_size=3
    )
    # Independent of the storage order: same ids -> same batches of ids.
    perm = list(reversed(idx))
    a = [[ids[i] for i in b] for b in epoch_batches(idx, ids, lengths, **kw)]
    rids = [ids[i] for i in perm]
    rlen = [lengths[i] for i in perm]
    b = [[rids[i] for i in bb] for bb in epoch_batches(idx, rids, rlen, **kw)]
    assert a == b


def test_sampler_batches_by_length() -> None:
    ids = [f"d{i}" for i in range(256)]
    lengths = [int(x) for x in torch.randint(10, 1000, (256,), generator=torch.Generator().manual_seed(0))]
    batches = epoch_batches(list(range(256)), ids, lengths, seed=0, epoch=0, batch_size=8)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.3 * sum(lengths)  # random batching pads ~2x here


def test_eval_batches_cover_everything_once_in_step() -> None:
    idx = list(range(11))
    lengths = [5] * 11
    per_rank = [eval_batches(idx, lengths, batch_size=2, world_size=3, rank=r) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    assert sorted(i for b in per_rank for x in b for i in x) == idx


def test_anchor_candidates_leave_room_for_a_block() -> None:
    mask = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    # span 3: anchors a in [1, 10-1-3=6] with mask[a]
    assert candidate_anchors(mask, 3).tolist() == [2, 3, 4, 5, 6]
    assert candidate_anchors(mask, 9).tolist() == []
    assert anchor_span(8, False) == 7 and anchor_span(8, True) == 8


def test_anchor_sampling_is_deterministic_valid_and_varies_by_epoch() -> None:
    mask = torch.ones(200, dtype=torch.bool)
    mask[:50] = False
    kw = dict(span=7, max_anchors=16, seed=0, sample_id="abc")
    a0 = sample_anchors(mask, epoch=0, **kw)
    assert torch.equal(a0, sample_anchors(mask, epoch=0, **kw))
    assert not torch.equal(a0, sample_anchors(mask, epoch=1, **kw))
    assert not torch.equal(a0, sample_anchors(mask, epoch=0, **{**kw, "sample_id": "abd"}))
    assert a0.numel() == 16 and len(set(a0.tolist())) == 16
    assert torch.equal(a0, a0.sort().values)
    assert int(a0.min()) >= 50 and int(a0.max()) <= 200 - 1 - 7
    # Fewer candidates than max_anchors: all of them.
    few = torch.zeros(20, dtype=torch.bool)
    few[5:8] = True
    assert sample_anchors(few, epoch=0, **kw).tolist() == [5, 6, 7]


def test_anchor_draw_is_roughly_uniform() -> None:
    mask = torch.ones(30, dtype=torch.bool)
    counts = torch.zeros(30)
    for e in range(3000):
        counts[sample_anchors(mask, span=3, max_anchors=5, seed=0, sample_id="u", epoch=e)] += 1
    cand = counts[1:27]
    assert counts[0] == 0 and counts[27:].sum() == 0
    assert float(cand.min()) > 0.75 * float(cand.mean()) and float(cand.max()) < 1.25 * float(cand.mean())


def test_collate_shapes_and_padding() -> None:
    src = _source()
    cfg = _cfg()
    loader = TrainLoader(src, list(range(len(src))), cfg)
    batch = next(loader)
    loader.close()
    b, t = batch.input_ids.shape
    assert batch.context_hidden.shape == (b, t, 2 * 8) and batch.target_hidden.shape == (b, t, 8)
    assert batch.context_hidden.dtype == torch.bfloat16
    for row, sid in enumerate(batch.ids):
        s = src.get(src.ids.index(sid))
        n = s.input_ids.numel()
        assert int(batch.lengths[row]) == n
        assert torch.equal(batch.input_ids[row, :n], s.input_ids) and not batch.loss_mask[row, n:].any()
        assert torch.equal(batch.context_hidden[row, :n, 8:], s.hidden[:, 1])
        assert torch.equal(batch.target_hidden[row, :n], s.hidden[:, 2])
        anc = batch.anchors[row][batch.anchor_valid[row]]
        assert anc.numel() <= 4 and bool(s.loss_mask[anc].all()) and int(anc.max()) <= n - 1 - 3


def _signature(batch) -> tuple:
    return (tuple(batch.ids), batch.anchors.tolist(), batch.anchor_valid.tolist())


def test_loader_order_does_not_depend_on_threads() -> None:
    src = _source()

    class Jittery:
        """A source whose reads take random time, to shuffle thread completion order."""

        def __init__(self, inner):
            self.inner, self.info = inner, inner.info
            self.ids, self.lengths = inner.ids, inner.lengths
            self.rng = __import__("random").Random(threading.get_ident())

        def __len__(self):
            return len(self.inner)

        def get(self, i):
            time.sleep(self.rng.random() * 0.003)
            return self.inner.get(i)

    idx = list(range(len(src)))
    sync = TrainLoader(src, idx, _cfg(num_workers=0))
    threaded = TrainLoader(Jittery(src), idx, _cfg(num_workers=3, prefetch=5))
    n = 2 * sync.batches_per_epoch + 3  # across epoch boundaries
    a = [_signature(next(sync)) for _ in range(n)]
    b = [_signature(next(threaded)) for _ in range(n)]
    threaded.close()
    assert a == b


def test_loader_resumes_mid_epoch() -> None:
    src = _source()
    idx = list(range(len(src)))
    full = TrainLoader(src, idx, _cfg())
    n = full.batches_per_epoch + 5
    expected = [_signature(next(full)) for _ in range(n)]
    full.close()
    first = TrainLoader(src, idx, _cfg())
    got = [_signature(next(first)) for _ in range(7)]
    state = first.state_dict()
    first.close()
    assert state == {"epoch": 0, "position": 7}
    resumed = TrainLoader(src, idx, _cfg())
    resumed.load_state_dict(state)
    got += [_signature(next(resumed)) for _ in range(n - 7)]
    resumed.close()
    assert got == expected
    assert resumed.state_dict() == {"epoch": 1, "position": 5}


def test_loader_refuses_too_little_data() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(_source(3), [0, 1, 2], _cfg(batch_size=4))


def test_eval_loader_fixed_anchors_and_dummy_batches() -> None:
    src = _source()
    idx = [0, 1, 2, 3, 4]
    runs = [[_signature(b) for b in eval_loader(src, idx, _cfg(), world_size=2, rank=r)] for r in range(2)]
    assert len(runs[0]) == len(runs[1]) == 2
    again = [_signature(b) for b in eval_loader(src, idx, _cfg(), world_size=2, rank=1)]
    assert again == runs[1]
    last = list(eval_loader(src, idx, _cfg(), world_size=2, rank=1))[-1]
    assert not last.anchor_valid.any() and last.num_tokens == 0  # rank 1 has 2 samples: one dummy batch
