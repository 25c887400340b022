"""Group codecs dequantise on the trainer's device: loader threads hand over int8 codes + bf16 scales,
`Batch.to(device)` dequantises. The same code runs on CPU here and must give the eager path's bits."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dspark_data.store import HiddenStateWriter, open_hidden
from dspark_data.store.groupq import QuantPlanes
from dspark_data.store.hidden import HiddenSample
from dspark_data.store.parts import open_hidden_any, part_name
from dspark_data.store.topk import TopK
from dspark_data.vocab import build_vocab
from dspark_train import run_plan as run_plan_mod
from dspark_train.data import LoaderConfig, SyntheticHiddenSource, TrainLoader
from dspark_train.data.collate import DeferredHidden, collate
from dspark_train.data.hidden_source import StoreSource
from dspark_train.entrypoint import run
from dspark_train.trainer import TrainOptions
from schemas.loading import load_recipe

LAYERS = [1, 3, 5, 6]  # aux 1, 3, 5 + the tiny target's last layer
GROUP_CODEC = "int5-g32-delta"
TIMING = ("tokens_per_s", "data_wait_frac", "time", "elapsed_s")
SMALL = ["seq_len=64", "model.num_layers=1", "vocab.draft_vocab_size=256", "train.batch_size=2",
         "train.grad_accum=2", "train.max_anchors=8", "train.val_fraction=0.15", "train.val_every=2",
         "train.save_every=4", "train.log_every=1", "train.num_workers=2"]


def _write(directory: Path, codec: str, n: int = 20, parts: int = 0) -> Path:
    """One dataset, or with `parts` a parent of that many dump-hidden parts (samples dealt round-robin)."""
    src = SyntheticHiddenSource(n, layer_ids=LAYERS, hidden_size=128, vocab_size=2048, min_len=20, max_len=64, seed=3)
    jobs = [(directory, None, range(n))] if not parts else [
        (directory / part_name(parts, k), {"num_shards": parts, "shard_index": k}, range(k, n, parts))
        for k in range(parts)
    ]
    for out, extra, rows in jobs:
        with HiddenStateWriter(out, layer_ids=LAYERS, hidden_size=128, codec=codec, target="tiny:random",
                               seq_len=64, shard_bytes=1 << 16, extra_fingerprint=extra) as w:
            for i in rows:
                s = src.get(i)
                w.write(s.id, s.input_ids, s.loss_mask, s.hidden)
    return directory


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device-dequant")
    out = {codec: _write(root / codec, codec) for codec in (GROUP_CODEC, "zstd-split")}
    out["parts"] = _write(root / "parts", GROUP_CODEC, n=6, parts=2)
    return out


def _cfg(**kw) -> LoaderConfig:
    return LoaderConfig(seed=0, batch_size=3, max_anchors=4, span=7, aux_slots=(0, 1, 2), last_slot=3,
                        num_workers=0, prefetch=0, **kw)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16)


def test_loader_hands_over_planes_for_group_codecs_only(stored) -> None:
    group = StoreSource(open_hidden(stored[GROUP_CODEC]))
    exact = StoreSource(open_hidden(stored["zstd-split"]))
    planes = group.get_deferred(0).hidden
    assert isinstance(planes, QuantPlanes) and planes.codes.dtype == torch.int8
    assert torch.equal(_bits(planes.dequantize()), _bits(group.get(0).hidden))
    tensor = exact.get_deferred(0).hidden
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16
    assert torch.equal(_bits(tensor), _bits(exact.get(0).hidden))

    parts = StoreSource(open_hidden_any(stored["parts"]))  # a dump-hidden parts parent reads the same way
    assert len(parts) == 6 and all(isinstance(parts.get_deferred(i).hidden, QuantPlanes) for i in range(6))
    assert torch.equal(_bits(parts.get_deferred(5).hidden.dequantize()), _bits(parts.get(5).hidden))

    idx = list(range(len(group)))
    deferred = next(TrainLoader(group, idx, _cfg()))
    eager = next(TrainLoader(group, idx, _cfg(device_dequant=False)))
    assert deferred.context_hidden is None and isinstance(deferred.deferred, DeferredHidden)
    assert eager.deferred is None and next(TrainLoader(exact, idx, _cfg())).deferred is None
    on_device = deferred.to("cpu")
    assert on_device.deferred is None and on_device.context_hidden.shape == eager.context_hidden.shape
    assert torch.equal(_bits(on_device.context_hidden), _bits(eager.context_hidden))  # padding included
    assert torch.equal(_bits(on_device.target_hidden), _bits(eager.target_hidden))
    assert on_device.context_hidden.is_contiguous() and on_device.target_hidden.is_contiguous()

    # A batch mixing planes and tensors (not produced by one dataset) falls back to the eager padding.
    mixed = collate([group.get_deferred(0), group.get(1)], [torch.tensor([3]), torch.tensor([4])],
                    aux_slots=(0, 1, 2), last_slot=3)
    alike = collate([group.get(0), group.get(1)], [torch.tensor([3]), torch.tensor([4])],
                    aux_slots=(0, 1, 2), last_slot=3)
    assert mixed.deferred is None and torch.equal(_bits(mixed.context_hidden), _bits(alike.context_hidden))

    # Top-K targets (no last layer among the slots): only the context is deferred.
    def with_topk(s: HiddenSample) -> HiddenSample:
        t = int(s.input_ids.shape[0])
        return replace(s, topk=TopK(torch.zeros(t, 2, dtype=torch.long), torch.zeros(t, 2, dtype=torch.float16),
                                    torch.zeros(t)))

    anchors = [torch.tensor([3]), torch.tensor([4])]
    tk = collate([with_topk(group.get_deferred(i)) for i in (0, 1)], anchors, aux_slots=(1, 3), last_slot=None,
                 topk=2)
    tk_eager = collate([with_topk(group.get(i)) for i in (0, 1)], anchors, aux_slots=(1, 3), last_slot=None, topk=2)
    assert tk.deferred is not None and tk.to("cpu").target_hidden is None
    assert torch.equal(_bits(tk.to("cpu").context_hidden), _bits(tk_eager.context_hidden))


def _run(recipe, data: Path, vocab: Path, out: Path, device: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    run(recipe, TrainOptions(out_dir=out, data_dir=data, vocab_path=vocab, device=device, max_steps=4, progress=False))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ckpts = out / "checkpoints"
    weights = load_file(str(ckpts / (ckpts / "latest").read_text().strip() / "model.safetensors"))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows], weights


def _compare_runs(stored, tiny_random_target, tmp_path, monkeypatch, device: str) -> None:
    data = stored[GROUP_CODEC]
    build_vocab(data, tmp_path / "vocab", size=256, target_vocab_size=2048)
    vocab = tmp_path / "vocab" / "vocab.safetensors"
    recipe = load_recipe("tiny", [f"target.model={tiny_random_target}", *SMALL])
    calls = []
    real = DeferredHidden.materialize

    def counted(self, device_, non_blocking=False):
        calls.append(str(device_))
        return real(self, device_, non_blocking)

    monkeypatch.setattr(DeferredHidden, "materialize", counted)
    deferred = _run(recipe, data, vocab, tmp_path / "deferred", device)
    assert calls and all(c.startswith(device) for c in calls)  # every batch went through the device step
    trained = len(calls)
    monkeypatch.setattr(run_plan_mod, "LoaderConfig", functools.partial(LoaderConfig, device_dequant=False))
    eager = _run(recipe, data, vocab, tmp_path / "eager", device)
    assert len(calls) == trained  # the eager run never deferred
    assert [r["kind"] for r in deferred[0]].count("train") == 4 and any(r["kind"] == "val" for r in deferred[0])
    assert deferred[0] == eager[0]  # train losses and validation figures, bit for bit
    assert deferred[1].keys() == eager[1].keys()
    assert all(torch.equal(deferred[1][k], eager[1][k]) for k in deferred[1])


def test_training_over_deferred_planes_is_bit_identical_on_cpu(stored, tiny_random_target, tmp_path,
                                                               monkeypatch) -> None:
    _compare_runs(stored, tiny_random_target, tmp_path, monkeypatch, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: dequantisation on the GPU")
def test_device_dequant_on_cuda(stored, tiny_random_target, tmp_path, monkeypatch) -> None:  # pragma: no cover
    group = StoreSource(open_hidden(stored[GROUP_CODEC]))
    idx = list(range(len(group)))
    on_gpu = next(TrainLoader(group, idx, _cfg())).to("cuda")
    eager = next(TrainLoader(group, idx, _cfg(device_dequant=False))).to("cuda")
    assert on_gpu.context_hidden.device.type == "cuda"
    assert torch.equal(_bits(on_gpu.context_hidden), _bits(eager.context_hidden))
    assert torch.equal(_bits(on_gpu.target_hidden), _bits(eager.target_hidden))
    _compare_runs(stored, tiny_random_target, tmp_path, monkeypatch, "cuda")
