"""Background decoding with a deterministic order, and a resume state of two integers.

`TrainLoader` streams this rank's micro-batches epoch after epoch. Batch `(epoch, position)` is a pure
function of the seed, the split, the world size and the rank (see `sampler.py`, `anchors.py`), so
threads only change *when* a batch is ready, never *what* it is or in which order it is yielded:
decoding runs in a thread pool (`num_workers`) up to `prefetch` batches ahead and results are taken in
submission order. Its whole resume state is `{"epoch": e, "position": p}` (batches consumed so far in
epoch e), saved in checkpoints as JSON.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from dspark_data.mismatch import DataMismatch
from dspark_data.store.hidden import HiddenSample
from dspark_train.data.anchors import sample_anchors
from dspark_train.data.collate import Batch, collate
from dspark_train.data.hidden_source import HiddenSource
from dspark_train.data.sampler import epoch_batches, eval_batches
from schemas.recipe import TrainConfig

_TRAIN = TrainConfig()  # the recipe's loader knobs, for a LoaderConfig built without a recipe

K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides batch contents (besides the data), plus the prefetch knobs."""

    seed: int
    batch_size: int
    max_anchors: int
    span: int  # anchors.anchor_span(block_size, sample_from_anchor)
    aux_slots: tuple[int, ...]  # positions of the aux layers on the stored layer axis
    last_slot: int | None  # position of the last layer on the stored layer axis (None: top-K targets)
    num_workers: int = _TRAIN.num_workers
    prefetch: int = _TRAIN.prefetch
    topk: int = 0  # K of the top-K targets (each sample's stored top-K cut to K); 0 with a last_slot
    # Group codecs: threads only entropy-decode, `Batch.to(device)` dequantises (collate.py); False: all on the CPU
    device_dequant: bool = True


class Prefetcher(Generic[K, T]):
    """Map `make` over `keys` in a thread pool, `prefetch` ahead, yielding results in key order."""

    def __init__(self, keys: Iterable[K], make: Callable[[K], T], num_workers: int, prefetch: int) -> None:
        self._keys = iter(keys)
        self._make = make
        self._prefetch = max(1, prefetch)
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="dspark-data") if num_workers > 0 else None
        self._pending: deque[Future[T]] = deque()
        self._exhausted = False
        self.wait_s = 0.0  # time the consumer spent blocked on a batch not yet decoded

    def _fill(self) -> None:
        while self._pool is not None and not self._exhausted and len(self._pending) < self._prefetch:
            try:
                key = next(self._keys)
            except StopIteration:
                self._exhausted = True
                return
            self._pending.append(self._pool.submit(self._make, key))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        start = time.perf_counter()
        if self._pool is None:  # synchronous: decoding is all wait
            try:
                item = self._make(next(self._keys))
            finally:
                self.wait_s += time.perf_counter() - start
            return item
        self._fill()
        if not self._pending:
            raise StopIteration
        future = self._pending.popleft()
        self._fill()  # keep the pool busy while we wait for the head
        try:
            return future.result()
        finally:
            self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# Validation anchors do not move with the run seed: runs that differ only by their training seed (or by
# the codec of their data) are scored on the same blocks, so their difference is paired, not noise.
VAL_ANCHOR_SEED = 0


class _BatchMaker:
    """Decode + anchor + collate one batch of indices (runs on worker threads; holds no mutable state)."""

    def __init__(self, source: HiddenSource, cfg: LoaderConfig, fallback: int) -> None:
        self.source = source
        self.cfg = cfg
        self.fallback = fallback
        deferred = getattr(source, "get_deferred", None) if cfg.device_dequant else None  # stored data only
        self.read: Callable[[int], HiddenSample] = deferred or source.get

    def __call__(self, indices: Sequence[int], epoch: int | str) -> Batch:
        dummy = not indices
        samples = [self.read(i) for i in (indices or [self.fallback])]
        anchors = [
            sample_anchors(
                s.loss_mask,
                span=self.cfg.span,
                max_anchors=self.cfg.max_anchors,
                seed=VAL_ANCHOR_SEED if epoch == "val" else self.cfg.seed,
                sample_id=s.id,
                epoch=epoch,
            )
            for s in samples
        ]
        return collate(samples, anchors, aux_slots=self.cfg.aux_slots, last_slot=self.cfg.last_slot,
                       topk=self.cfg.topk, dummy=dummy)


class TrainLoader:
    """This rank's training micro-batches, epoch after epoch, resumable mid-epoch."""

    def __init__(
        self,
        source: HiddenSource,
        indices: Sequence[int],
        cfg: LoaderConfig,
        *,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.source = source
        self.indices = list(indices)
        self.cfg = cfg
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        self.position = 0
        self._make = _BatchMaker(source, cfg, fallback=self.indices[0] if self.indices else 0)
        self._cache: dict[int, list[list[int]]] = {}
        self.batches_per_epoch = len(self.batches(0))  # the same every epoch (sampler.py, step 2)
        if self.batches_per_epoch == 0:
            raise DataMismatch(
                f"{len(self.indices)} training samples cannot fill one global batch of "
                f"train.batch_size={cfg.batch_size} x {world_size} ranks; lower the batch size or add data"
            )
        self._prefetcher: Prefetcher | None = None
        self.wait_s = 0.0

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch` (cached: recomputing costs one hash per sample)."""
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = epoch_batches(
                self.indices,
                self.source.ids,
                self.source.lengths,
                seed=self.cfg.seed,
                epoch=epoch,
                batch_size=self.cfg.batch_size,
                world_size=self.world_size,
                rank=self.rank,
            )
        return self._cache[epoch]

    def _keys(self, epoch: int, position: int) -> Iterator[tuple[int, list[int]]]:
        # Runs on the consumer thread (inside Prefetcher._fill), so the epoch cache is never shared.
        while True:
            yield from ((epoch, b) for b in self.batches(epoch)[position:])
            epoch, position = epoch + 1, 0

    def _build(self, key: tuple[int, list[int]]) -> Batch:
        epoch, indices = key
        return self._make(indices, epoch)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(
                self._keys(self.epoch, self.position), self._build, self.cfg.num_workers, self.cfg.prefetch
            )
        before = self._prefetcher.wait_s
        batch = next(self._prefetcher)
        self.wait_s += self._prefetcher.wait_s - before
        self.position += 1
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: the batches consumed (not merely prefetched) so far."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position < self.batches_per_epoch:
            raise ValueError(f"loader position {self.position} outside epoch {self.epoch}'s batches")

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None


def eval_loader(
    source: HiddenSource, indices: Sequence[int], cfg: LoaderConfig, *, world_size: int = 1, rank: int = 0
) -> Prefetcher[list[int], Batch]:
    """This rank's validation batches with fixed anchors (epoch label "val"), prefetched in threads.

    Every rank yields the same number of batches; a rank with fewer samples gets dummy batches (all
    anchors invalid) so forwards with collectives (FSDP) stay in step.
    """
    lengths = source.lengths
    batches = eval_batches(indices, lengths, batch_size=cfg.batch_size, world_size=world_size, rank=rank)
    maker = _BatchMaker(source, cfg, fallback=min(indices, key=lambda i: lengths[i]) if indices else 0)
    return Prefetcher(batches, lambda b: maker(b, "val"), cfg.num_workers, cfg.prefetch)
