"""Top-K target log-probs without an engine: payload, store column, streamed record, loss bounds, collate.

The engine-backed checks (vLLM prompt_logprobs against transformers, the CLI end to end, the streamed
path) are in test_topk_vllm.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dspark_data.capture.logprobs import LogprobsError, from_logits, from_position_dicts, from_vllm_prompt_logprobs
from dspark_data.mismatch import DataMismatch
from dspark_data.store import HiddenStateWriter, StoreError, inspect, open_dataset, open_hidden, verify
from dspark_data.store import topk as tk
from dspark_data.store.hidden import HiddenSample
from dspark_data.store.sizing import project_size
from dspark_data.stream.record import decode_record, encode_sample
from dspark_train.data.checks import layer_slots
from dspark_train.data.collate import collate
from dspark_train.losses import DSparkLoss, SlotTargets, kl_term, slot_targets, slot_targets_topk, tv_bounds
from dspark_train.metrics import DraftMetrics
from dspark_train.model.draft import DraftOutput


def _topk(t: int = 12, v: int = 40, k: int = 6, seed: int = 0) -> tk.TopK:
    g = torch.Generator().manual_seed(seed)
    return from_logits(torch.randn(t, v, generator=g) * 3, k)


def test_payload_round_trip_truncate_and_damage() -> None:
    top = _topk()
    assert top.ids.shape == (12, 6) and top.logprobs.dtype == torch.float16
    assert torch.all(top.logprobs[:-1, :-1] >= top.logprobs[:-1, 1:])  # rank order
    assert top.tail[-1] == 1.0 and torch.isneginf(top.logprobs[-1]).all()  # the empty last row
    back = tk.decode(tk.encode(top), 12, 6)
    assert torch.equal(back.ids, top.ids) and torch.equal(back.logprobs, top.logprobs)
    assert torch.equal(back.tail, top.tail)
    cut = top.truncate(2)
    want = top.tail + top.logprobs[:, 2:].float().exp().sum(1)
    assert torch.allclose(cut.tail, want.clamp(max=1.0)) and cut.ids.shape == (12, 2)
    with pytest.raises(ValueError, match="top-7 of a top-6"):
        top.truncate(7)
    payload = bytearray(tk.encode(top))
    with pytest.raises(ValueError, match="shape"):
        tk.decode(bytes(payload), 11, 6)
    with pytest.raises(ValueError):
        tk.decode(bytes(payload[:-3]), 12, 6)


def test_tail_is_computed_before_fp16_rounding() -> None:
    """The stored tail is 1 - sum(exp(lp)) of the engine's float32 values, in float64."""
    lp = np.log(np.array([[0.5, 0.3, 0.15]], dtype=np.float64)).astype(np.float32)
    top = tk.from_logprobs(np.array([[3, 1, 2]]), lp)
    assert top.ids.tolist() == [[3, 1, 2]]
    assert abs(float(top.tail[0]) - 0.05) < 1e-6


def test_three_sources_give_the_same_top_k() -> None:
    """Flat vLLM lists, per-position dicts (the server's JSON) and logits agree on the same distribution."""
    logits = torch.randn(7, 30) * 2
    want = from_logits(logits, 4)
    lp = torch.log_softmax(logits, -1)
    prompt = [3, 9, 1, 4, 4, 0, 2]
    positions = []  # position i scores prompt[i] given < i, i.e. the row i - 1 distribution
    for i in range(1, 7):
        vals, ids = torch.topk(lp[i - 1], 4)
        pairs = enumerate(zip(ids, vals, strict=True))
        entry = {str(int(t)): {"logprob": float(x), "rank": r + 1} for r, (t, x) in pairs}
        actual = prompt[i]
        if str(actual) not in entry:
            entry[str(actual)] = {"logprob": float(lp[i - 1, actual]), "rank": 25}
        positions.append(entry)
    got = from_position_dicts(positions, 4)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.logprobs, want.logprobs)

    flat = _Flat()  # vLLM's FlatLogprobs layout: [prompt token, rank 1..K] per position, position 0 empty
    for i in range(1, 7):
        vals, ids = torch.topk(lp[i - 1], 4)
        flat.start_indices.append(len(flat.token_ids))
        flat.token_ids += [prompt[i], *ids.tolist()]
        flat.logprobs += [float(lp[i - 1, prompt[i]]), *vals.tolist()]
        flat.end_indices.append(len(flat.token_ids))
    got = from_vllm_prompt_logprobs(flat, 7, 4)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.logprobs, want.logprobs)
    with pytest.raises(LogprobsError, match="entries per position"):
        from_vllm_prompt_logprobs(flat, 7, 3)
    with pytest.raises(LogprobsError, match="for 7 positions, expected 8"):
        from_vllm_prompt_logprobs(flat, 8, 4)


class _Flat:
    """The attributes of vLLM's FlatLogprobs the reader uses (test_topk_vllm.py reads the real one)."""

    def __init__(self) -> None:
        self.start_indices, self.end_indices, self.token_ids, self.logprobs = [0], [0], [], []

    def __len__(self) -> int:
        return len(self.start_indices)


def _write(tmp_path, samples, k: int):
    out = tmp_path / "hidden"
    with HiddenStateWriter(out, layer_ids=[1, 3], hidden_size=16, codec="zstd-split", target="t", seq_len=64,
                           topk_logprobs=k) as w:
        for sid, ids, mask, hidden, top in samples:
            w.write(sid, ids, mask, hidden, top)
    return out


def _sample(i: int, t: int = 20, k: int = 6):
    g = torch.Generator().manual_seed(i)
    ids = torch.randint(0, 40, (t,), generator=g)
    mask = torch.arange(t) >= 4
    hidden = torch.randn(t, 2, 16, generator=g).to(torch.bfloat16)
    return f"s{i}", ids, mask, hidden, _topk(t, 40, k, seed=i)


def test_store_column_verify_inspect_and_stream_record_bit_identical(tmp_path) -> None:
    samples = [_sample(i) for i in range(3)]
    out = _write(tmp_path, samples, 6)
    ds = open_hidden(out, require_complete=True)
    assert ds.topk_logprobs == 6 and ds.manifest.columns["topk"] == "large_binary"
    for sid, _, _, hidden, top in samples:
        got = ds[ds.index_of(sid)]
        assert torch.equal(got.hidden, hidden) and torch.equal(got.topk.ids, top.ids)
        assert torch.equal(got.topk.logprobs, top.logprobs) and torch.equal(got.topk.tail, top.tail)
    assert verify(out).ok
    summary = inspect(out)
    assert summary["topk_logprobs"] == 6 and summary["fingerprint"]["topk_logprobs"] == 6
    raw = summary["raw_bytes"]
    assert raw == sum(s[1].numel() * (2 * 16 * 2 + tk.raw_bytes_per_token(6)) for s in samples)
    # the streamed record is the stored row, byte for byte
    store = open_dataset(out)
    for sid, ids, mask, hidden, top in samples:
        rec = decode_record(encode_sample(sid, ids.numpy(), mask.numpy(), hidden, codec="zstd-split",
                                        layer_ids=[1, 3], topk=top))
        batch, r = store.record(store.index_of(sid))
        assert rec.topk_logprobs == 6 and rec.batch.equals(batch.slice(r, 1))
        assert torch.equal(rec.decode().topk.logprobs, top.logprobs)
        assert rec.raw_bytes == ids.numel() * (2 * 16 * 2 + tk.raw_bytes_per_token(6))


def test_writer_refuses_missing_or_misshapen_top_k(tmp_path) -> None:
    sid, ids, mask, hidden, top = _sample(0)
    with pytest.raises(StoreError, match="top-6 distribution"):
        _write(tmp_path, [(sid, ids, mask, hidden, None)], 6)
    with pytest.raises(StoreError, match="expected \\[20, 4\\]"):
        _write(tmp_path / "b", [(sid, ids, mask, hidden, top)], 4)
    with pytest.raises(StoreError, match="no top-K distribution"):
        _write(tmp_path / "c", [(sid, ids, mask, hidden, top)], 0)


def test_dry_run_projection_counts_the_top_k_column() -> None:
    plain = project_size(6144, 5, 1000, "zstd-split")
    with_topk = project_size(6144, 5, 1000, "zstd-split", topk_logprobs=64)
    assert with_topk.raw_bytes - plain.raw_bytes == 1000 * (6 * 64 + 4)
    assert with_topk.bytes > plain.bytes


def test_layer_slots_choose_the_targets() -> None:
    assert layer_slots([1, 3, 6], [1, 3], 6, "d").last == 2
    slots = layer_slots([1, 3, 6], [1, 3], 6, "d", include_last_layer=False, topk=16, stored_topk=64)
    assert slots.last is None and slots.topk == 16
    with pytest.raises(DataMismatch, match="top-16 log-probs"):
        layer_slots([1, 3], [1, 3], 6, "d", include_last_layer=False, topk=64, stored_topk=16)
    with pytest.raises(DataMismatch, match="without targets"):
        layer_slots([1, 3], [1, 3], 6, "d", include_last_layer=False, topk=0)


def _slots(b=2, a=3, p=4, t=16):
    g = torch.Generator().manual_seed(5)
    anchors = torch.sort(torch.randint(1, t - p - 1, (b, a), generator=g), dim=1).values
    positions = anchors[..., None] + torch.arange(1, p + 1)
    valid = torch.ones(b, a, p, dtype=torch.bool)
    return DraftOutput(logits=None, positions=positions, valid=valid, confidence_logits=None)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_tv_bounds_contain_the_true_tv_greedy_is_exact_kl_is_a_lower_bound(k: int) -> None:
    """With the full target distribution known, the top-K figures bracket (or equal) the exact ones."""
    b, t, v = 2, 16, 40
    g = torch.Generator().manual_seed(k)
    target_logits = torch.randn(b, t, v, generator=g) * 2.5
    p_full = torch.softmax(target_logits, -1)
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[torch.randperm(v, generator=g)[:30]] = True
    input_ids = torch.randint(0, v, (b, t), generator=g)
    loss_mask = torch.ones(b, t, dtype=torch.bool)
    out = _slots(b, t=t)
    exact = slot_targets(out, input_ids, loss_mask, p_full[..., t2d], t2d, None)
    tops = [from_logits(target_logits[i], k) for i in range(b)]
    ids = torch.stack([x.ids for x in tops])
    probs = torch.stack([x.probs() for x in tops])
    tail = torch.stack([x.tail for x in tops])
    approx = slot_targets_topk(out, input_ids, loss_mask, ids, probs, tail, t2d)
    q = torch.softmax(torch.randn(*exact.probs.shape, generator=g), -1)
    tv_true, zero = tv_bounds(q, exact)
    assert torch.equal(zero, torch.zeros_like(zero))
    tv_hi, room = tv_bounds(q, approx)
    assert torch.all(tv_hi >= tv_true - 1e-3) and torch.all(tv_hi - room <= tv_true + 1e-3)
    assert torch.all(room <= approx.tail + 1e-6)
    # greedy: the target's full-vocab argmax as a draft id (-1 outside), exactly
    argmax = gather_rows(p_full.argmax(-1), out.positions - 1)
    draft_index = torch.where(t2d, torch.cumsum(t2d.long(), 0) - 1, -1)
    assert torch.equal(approx.greedy_ids, draft_index[argmax])
    logq = torch.log(q)
    kl_exact = kl_term(logq, SlotTargets(exact.probs, exact.token_ids, None, exact.mask))
    assert torch.all(kl_term(logq, approx) <= kl_exact + 1e-3)
    if k == v:  # everything known: no tail, the figures are the exact ones
        assert torch.allclose(tv_hi, tv_true, atol=2e-3) and float(room.max()) < 1e-3


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    b, a, p = rows.shape
    return x.gather(1, rows.reshape(b, a * p)).view(b, a, p)


def test_loss_and_metrics_run_on_top_k_targets_and_report_the_bound() -> None:
    b, t, v, k = 2, 16, 40, 4
    g = torch.Generator().manual_seed(1)
    t2d = torch.ones(v, dtype=torch.bool)
    tops = [from_logits(torch.randn(t, v, generator=g) * 2, k) for _ in range(b)]
    out = _slots(b, t=t)
    input_ids = torch.randint(0, v, (b, t), generator=g)
    targets = slot_targets_topk(out, input_ids, torch.ones(b, t, dtype=torch.bool),
                                torch.stack([x.ids for x in tops]), torch.stack([x.probs() for x in tops]),
                                torch.stack([x.tail for x in tops]), t2d)
    logits = torch.randn(*targets.probs.shape, generator=g, requires_grad=True)
    losses = DSparkLoss({"ce": 0.1, "tv": 0.9, "kl": 0.1})(logits, targets)
    losses["loss"].backward()
    assert logits.grad is not None and math.isfinite(float(losses["loss"].detach()))
    metrics = DraftMetrics(4)
    metrics.update(logits.detach(), targets)
    figures = metrics.compute()
    want_tail = float(targets.tail.mean())
    assert abs(figures["target_tail_mass"] - want_tail) < 1e-6
    assert 0.0 < figures["tv_tail_bound"] <= want_tail


def test_collate_carries_the_cut_top_k_instead_of_the_last_layer() -> None:
    samples = []
    for i, t in enumerate((10, 14)):
        sid, ids, mask, hidden, top = _sample(i, t=t, k=6)
        samples.append(HiddenSample(sid, ids, mask, hidden, top))
    anchors = [torch.tensor([1, 3]), torch.tensor([2])]
    batch = collate(samples, anchors, aux_slots=(0, 1), last_slot=None, topk=4)
    assert batch.target_hidden is None and batch.topk_ids.shape == (2, 14, 4)
    assert torch.equal(batch.topk_ids[0, :10], samples[0].topk.ids[:, :4])
    assert torch.allclose(batch.topk_tail[0, :10], samples[0].topk.truncate(4).tail)
    assert torch.all(batch.topk_tail[0, 10:] == 1.0) and torch.all(batch.topk_probs[0, 10:] == 0)
    with pytest.raises(ValueError, match="no stored top-K"):
        collate([HiddenSample("x", samples[0].input_ids, samples[0].loss_mask, samples[0].hidden)], anchors[:1],
                aux_slots=(0, 1), last_slot=None, topk=4)
