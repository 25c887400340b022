"""What the data pipeline reads: a random-access collection of hidden-state samples.

The trainer never depends on the store's readers directly; it reads through `HiddenSource`, a small
Protocol the store's `open_hidden(dir)` dataset satisfies through `StoreSource` below. A sample is the
store's own record, `dspark_data.store.hidden.HiddenSample` (one definition, yielded by every reader). Tests and the
benchmark use `SyntheticHiddenSource` (random tensors, no disk) so the pipeline can be checked without
a captured dataset.

Sample layout (see docs/architecture.md, "Store"): `input_ids int64 [T]`, `loss_mask bool [T]`,
`hidden bfloat16 [T, L, H]` with L = the aux layers in recipe order, then the last layer id N.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dspark_data.seeding import derive_seed
from dspark_data.store.hidden import HiddenSample


@dataclass(frozen=True)
class SourceInfo:
    """What the trainer checks a dataset against before training (`inputs.load_inputs`, `checks.check_hidden`)."""

    layer_ids: list[int]
    hidden_size: int
    fingerprint: str
    target: str | None = None  # the target spec the data was captured from, when recorded
    topk_logprobs: int = 0  # K of the stored top-K target log-probs (0: none)


@runtime_checkable
class HiddenSource(Protocol):
    """Random access over samples; `ids` and `lengths` must be cheap (no payload decode)."""

    info: SourceInfo

    def __len__(self) -> int: ...

    @property
    def ids(self) -> Sequence[str]: ...

    @property
    def lengths(self) -> Sequence[int]: ...

    def get(self, index: int) -> HiddenSample: ...


class IndexedSource:
    """The id/length half of `HiddenSource`, shared by every source: subclasses fill `_ids` and `_lengths`."""

    _ids: list[str]
    _lengths: list[int]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    @property
    def lengths(self) -> Sequence[int]:
        return self._lengths


class StoreSource(IndexedSource):
    """Adapter from the store's hidden-state dataset (`dspark_data.store.open_hidden`) to `HiddenSource`."""

    def __init__(self, dataset: Any, skip: Collection[str] = ()) -> None:
        self._ds = dataset
        manifest = dataset.manifest
        fingerprint = str(manifest.fingerprint_hash)
        self._ids = list(dataset.ids)
        self._lengths = [int(n) for n in dataset.lengths]
        self._rows: list[int] | None = None  # dataset row of each kept sample, when samples are skipped
        if skip:  # `--skip-samples` (damaged samples, see data/integrity.py): never read, part of the fingerprint
            skip = set(skip)
            unknown = sorted(skip - set(self._ids))
            if unknown:
                from dspark_data.mismatch import DataMismatch

                raise DataMismatch(f"--skip-samples names ids that are not in the dataset: {unknown[:10]}")
            self._rows = [i for i, sid in enumerate(self._ids) if sid not in skip]
            self._ids = [self._ids[i] for i in self._rows]
            self._lengths = [self._lengths[i] for i in self._rows]
            fingerprint += "-skip-" + hashlib.sha256("\n".join(sorted(skip)).encode()).hexdigest()[:16]
        self.info = SourceInfo(
            layer_ids=list(manifest.layer_ids or []),
            hidden_size=int(manifest.hidden_size or 0),
            fingerprint=fingerprint,
            target=(manifest.fingerprint or {}).get("target"),
            topk_logprobs=int(getattr(manifest, "topk_logprobs", None) or 0),
        )

    def get(self, index: int) -> HiddenSample:
        return self._ds[self._row(index)]

    def get_deferred(self, index: int) -> HiddenSample:
        """`get` with the group codecs' dequantisation left to the batch's device: `hidden` is the store's
        `QuantPlanes` for them (`collate` pads them, `Batch.to` dequantises), the bf16 tensor otherwise."""
        return self._ds.get_deferred(self._row(index))

    def _row(self, index: int) -> int:
        return index if self._rows is None else self._rows[index]


def open_source(
    path: str | Path,
    *,
    skip: Collection[str] = (),
    verify: bool = True,
    record_dir: Path | None = None,
    checks: list[Any] | None = None,
) -> HiddenSource:
    """Open a hidden-state dataset directory written by `dspark dump-hidden` (or a parent of its parts).

    `verify`: first re-hash every sample (`dspark verify`) and refuse a corrupt dataset unless its damaged
    samples are all in `skip` (`data/integrity.py`); `record_dir`: where a passed check may be remembered
    (the train directory) so a rerun over unchanged files skips it; `checks`: receives each
    `IntegrityCheck` (its message, and `remember()` for when the run is accepted); `skip`: sample ids left
    out of training.
    """
    from dspark_data.store import open_hidden  # imported lazily: the store may be absent in unit tests
    from dspark_data.store.parts import find_part_dirs, is_parts_parent, open_hidden_any
    from dspark_data.stream.replay_cache import all_dirs, is_cache, open_cache

    cache = is_cache(Path(path))  # `dspark train --stream --cache-dir DIR` output: one store dataset per rank
    parts = not cache and is_parts_parent(path)  # `dump-hidden --num-shards N` output: part-i-of-N/ folders
    if parts:
        dataset = open_hidden_any(Path(path))  # merge-checked before the (costly) integrity pass
    if verify:
        from dspark_train.data.integrity import check_integrity

        dirs = all_dirs(Path(path)) if cache else find_part_dirs(path) if parts else [Path(path)]
        for directory in dirs:
            done = check_integrity(directory, skip, record_dir=record_dir)
            if checks is not None:
                checks.append(done)
    if not parts:
        dataset = open_cache(Path(path)) if cache else open_hidden(Path(path))
    return StoreSource(dataset, skip=skip)


class SyntheticHiddenSource(IndexedSource):
    """Deterministic random samples in memory: tests and the trainer benchmark without captured data.

    Each sample is a pure function of (seed, index), so two instances built alike are identical. Hidden
    states are random bf16; the last layer is a fixed random projection of the token's embedding so a
    draft can actually learn something from it (the loss goes down).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        layer_ids: Sequence[int],
        hidden_size: int,
        vocab_size: int,
        min_len: int = 16,
        max_len: int = 64,
        prompt_frac: float = 0.25,
        seed: int = 0,
    ) -> None:
        self.info = SourceInfo(
            layer_ids=list(layer_ids),
            hidden_size=hidden_size,
            fingerprint=f"synthetic-{seed}-{num_samples}-{min_len}-{max_len}-{hidden_size}-{vocab_size}",
        )
        self.vocab_size = vocab_size
        self.prompt_frac = prompt_frac
        self.seed = seed
        self._ids = [f"syn-{seed}-{i:06d}" for i in range(num_samples)]
        rng = torch.Generator().manual_seed(derive_seed(seed, "synthetic-lengths"))
        self._lengths = torch.randint(min_len, max_len + 1, (num_samples,), generator=rng).tolist()
        emb = torch.Generator().manual_seed(derive_seed(seed, "synthetic-embedding"))
        n_layers = len(layer_ids)
        self._table = torch.randn(vocab_size, n_layers, hidden_size, generator=emb)

    def get(self, index: int) -> HiddenSample:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "synthetic-sample", index))
        t = self._lengths[index]
        # A learnable sequence: a random walk over token ids with small steps.
        steps = torch.randint(-3, 4, (t,), generator=g)
        start = torch.randint(0, self.vocab_size, (1,), generator=g)
        input_ids = (start + steps.cumsum(0)) % self.vocab_size
        loss_mask = torch.zeros(t, dtype=torch.bool)
        loss_mask[max(1, int(t * self.prompt_frac)) :] = True
        hidden = self._table[input_ids] + 0.1 * torch.randn(t, *self._table.shape[1:], generator=g)
        return HiddenSample(self._ids[index], input_ids.long(), loss_mask, hidden.to(torch.bfloat16))
