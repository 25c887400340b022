"""Codec trial on a user's own capture: bytes/token, projected size and per-core speed of every codec.

Why: the tiny target's activations are not GLM-5.2's, and a codec's ratio and error depend on the
model. Before a capture that costs days and terabytes, `dspark codecs --data DIR` re-encodes the first N
samples of a small capture with each codec, writing each into a real dataset with `HiddenStateWriter`
(so bytes/token counts every stored field: token ids, loss mask, Arrow framing, index), and times the
codec itself per core. The same datasets feed the short training runs of `dspark_train.codec_trial`.

    figs = trial_codecs(open_hidden(capture), ["raw", "zstd-split", "int4-g32-delta"], workdir, samples=32)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dspark_data.store import codecs
from dspark_data.store.hidden import HiddenDataset, HiddenStateWriter, open_hidden

# the manifest fingerprint keys HiddenStateWriter sets itself; the rest is passed through as extra
_OWN_KEYS = {"target", "target_revision", "layer_ids", "hidden_size", "seq_len", "codec", "zstd_level",
             "regen_fingerprint", "topk_logprobs"}


@dataclass(frozen=True)
class CodecFigures:
    """One codec measured on the same samples."""

    codec: str
    lossless: bool
    samples: int
    tokens: int
    bytes_per_token: float  # stored (shards + indexes + manifest fields per sample), all fields included
    raw_bytes_per_token: float  # bf16 payload only (L * H * 2)
    ratio: float  # bytes/token of the raw codec's dataset over this one's (same samples, same fields)
    rel_error: float  # ||x' - x|| / ||x|| over all samples
    exact: bool  # every decoded sample equals its source bit for bit
    encode_mb_per_cpu_s: float  # MB of bf16 per CPU second, one thread
    decode_mb_per_cpu_s: float  # full decode on the CPU, one thread
    unpack_mb_per_cpu_s: float  # the CPU's share when the device dequantises (= decode for exact codecs)
    directory: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Per-core figures: no intra-op helper threads on the CPU clock."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transcode(source: HiddenDataset, out: Path, codec: str, indices: Sequence[int], *, level: int = 1) -> Path:
    """Write samples `indices` of `source` into a new dataset at `out` with `codec` (same ids, tokens, layers
    and fingerprint fields but the codec). Resumable like every store writer. The codec applies to the
    hidden-state planes only: whatever else a sample stores beside them (a top-K target distribution,
    `manifest.topk_logprobs`) is copied as it is."""
    fp = source.manifest.fingerprint
    topk_k = int(getattr(source.manifest, "topk_logprobs", None) or 0)
    beside: dict[str, Any] = {"topk_logprobs": topk_k} if topk_k else {}
    with HiddenStateWriter(
        out, layer_ids=source.layer_ids, hidden_size=source.hidden_size, codec=codec,
        target=str(fp.get("target")), target_revision=fp.get("target_revision"), seq_len=int(fp.get("seq_len", 0)),
        regen_fingerprint=fp.get("regen_fingerprint"), zstd_level=level,
        extra_fingerprint={k: v for k, v in fp.items() if k not in _OWN_KEYS}, threads=1, **beside,
    ) as w:
        done = w.committed_ids
        for i in indices:
            s = source[i]
            if s.id not in done:
                w.write(s.id, s.input_ids, s.loss_mask, s.hidden, **({"topk": s.topk} if topk_k else {}))
    return out


def _cpu_seconds(fn: Any, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def measure_codec(codec: str, hidden: list[torch.Tensor], directory: Path, raw_stored: float | None) -> CodecFigures:
    """Figures of one codec on `hidden` (the samples already written to `directory` with it)."""
    from dspark_data.store.codecs import decode_deferred

    ds = open_hidden(directory)
    tokens = int(ds.lengths.sum())
    raw = sum(x.numel() * 2 for x in hidden)
    stored = ds.manifest.totals.stored_bytes
    with one_torch_thread():
        payloads = [codecs.encode(codec, x, threads=1) for x in hidden]
        enc = _cpu_seconds(lambda: [codecs.encode(codec, x, threads=1) for x in hidden])
        pairs = list(zip(payloads, hidden, strict=True))
        dec = _cpu_seconds(lambda: [codecs.decode(codec, p, x.shape) for p, x in pairs])
        unpack = _cpu_seconds(lambda: [decode_deferred(codec, p, x.shape) for p, x in pairs])
    err_sq = ref_sq = 0.0
    exact = True
    for i, x in enumerate(hidden):
        y = ds[i].hidden
        exact = exact and torch.equal(y.view(torch.int16), x.view(torch.int16))
        err_sq += float((y.float() - x.float()).pow(2).sum())
        ref_sq += float(x.float().pow(2).sum())
    return CodecFigures(
        codec=codec, lossless=codecs.get_codec(codec).lossless, samples=len(hidden), tokens=tokens,
        bytes_per_token=stored / max(tokens, 1), raw_bytes_per_token=raw / max(tokens, 1),
        ratio=(raw_stored if raw_stored is not None else stored) / max(stored, 1),
        rel_error=(err_sq / max(ref_sq, 1e-30)) ** 0.5, exact=exact,
        encode_mb_per_cpu_s=raw / enc / 1e6, decode_mb_per_cpu_s=raw / dec / 1e6,
        unpack_mb_per_cpu_s=raw / unpack / 1e6, directory=str(directory),
    )


def trial_codecs(source: HiddenDataset, names: Sequence[str], workdir: Path, *, samples: int) -> list[CodecFigures]:
    """Every codec of `names` on the first `samples` samples of `source`; `raw` is always measured first
    (it is the reference of every ratio). Datasets land in `workdir/<codec>`."""
    for name in names:
        codecs.get_codec(name)  # unknown codec: error before any work
    order = ["raw", *(n for n in names if n != "raw")]
    indices = list(range(min(samples, len(source))))
    hidden = [source[i].hidden for i in indices]
    out: list[CodecFigures] = []
    raw_stored: float | None = None
    for name in order:
        directory = transcode(source, workdir / name, name, indices)
        if name == "raw":
            raw_stored = float(open_hidden(directory).manifest.totals.stored_bytes)
        out.append(measure_codec(name, hidden, directory, raw_stored))
    return out


def measured_ratios(directory: Path, layer_ids: Sequence[int] | None = None,
                    hidden_size: int | None = None) -> dict[str, tuple[float, str]]:
    """{codec: (raw bf16 bytes / all stored bytes, the dataset it was measured on)} of the hidden datasets at
    `directory`: the directory itself (e.g. a partial `dump-hidden` output) and its sub-directories down to
    two levels (a `dspark codecs --work` dir holds `codecs/<codec>/`). Datasets of another shape (layer ids,
    hidden size) than given are skipped: their ratios are not this capture's. Used by `dump-hidden --dry-run`."""
    found: dict[str, tuple[float, str]] = {}
    candidates = [directory, *sorted(directory.glob("*")), *sorted(directory.glob("*/*"))] if directory.is_dir() else []
    for d in candidates:
        if not (d / "manifest.json").is_file():
            continue
        try:
            ds = open_hidden(d)
        except Exception:  # noqa: BLE001 - not a hidden dataset (regen, damaged): nothing measured there
            continue
        if layer_ids is not None and list(ds.layer_ids) != list(layer_ids):
            continue
        if hidden_size is not None and ds.hidden_size != hidden_size:
            continue
        totals = ds.manifest.totals
        if totals.tokens and totals.stored_bytes and ds.codec not in found:
            found[ds.codec] = (totals.raw_bytes / totals.stored_bytes, str(d))
    return found
