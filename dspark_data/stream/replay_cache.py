"""The hybrid-mode cache: every streamed sample teed into the store, so later epochs replay from disk.

Layout: `<cache-dir>/cache.json` (`schemas.stream.CacheInfo`, the marker `dspark train --data` looks
for) and one ordinary hidden-state store dataset per trainer rank, `<cache-dir>/rank-NNNNN/`. Why one
dataset per rank: a store dataset has exactly one writer (it holds a lock), and ranks stream disjoint
samples at the same time. Every rank reads every part, so a sample streamed by rank 0 in epoch 0 is
replayed by rank 1 in epoch 1.

Why the parts are interchangeable with `dump-hidden`'s output: each part is written by
`HiddenStateWriter` with dump-hidden's fingerprint (target, layers, codec, seq_len, regen data, backend,
engine dtype), and its rows are the received record batches appended unchanged (`record.py`), so
`CacheDataset` (all parts as one dataset) reads exactly the bytes the streamed run decoded. A resumed
trainer reopens its part: committed samples are kept, the uncommitted tail is dropped and re-streamed.

Commits: one writer thread per rank appends rows and commits when `commit_s` has passed since the last
commit, at close, and at once when another rank waits for one of its uncommitted samples (the waiting
rank lists the ids in `<cache-dir>/.wanted/rank-NNNNN.json`). Until its commit a sample stays in memory
(encoded) so its own rank can reuse it; other ranks see it once committed (`PartsView.refresh`).

Seeded cache: a `--cache-dir` that holds `part-i-of-N/` folders (`dspark dump-hidden --num-shards N`
output) is a pre-filled cache. Its parts are read, never written: opened as one dataset (`store/parts.py`:
every part present and complete, disjoint ids) and checked against the stream's writer settings (the
same fingerprint apart from the part keys), their samples are served from disk and never streamed;
samples they lack are streamed into `rank-NNNNN/` beside them as usual. Why beside, not into the
parts: a part is one machine's finished dump (merge-checked as such); a rank part is the trainer's own.
`dspark train --data DIR` then reads seed and rank parts together (`CacheDataset`).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dspark_data.atomic import atomic_write_bytes
from dspark_data.store import HiddenDataset, HiddenSample, HiddenStateWriter, StoreError, open_hidden
from dspark_data.store.manifest import load_manifest, utc_now
from dspark_data.store.parts import find_part_dirs, open_hidden_any
from dspark_data.stream.record import StreamedRecord
from schemas.base import fingerprint as fingerprint_of
from schemas.store import MANIFEST_NAME, Manifest
from schemas.stream import CACHE_FORMAT, CACHE_INFO_NAME, CacheInfo

PART_PREFIX = "rank-"
WANTED_DIR = ".wanted"
PART_KEYS = ("num_shards", "shard_index")  # fingerprint keys of a dump-hidden part, not of its samples


def part_dir(cache_dir: Path, rank: int) -> Path:
    return Path(cache_dir) / f"{PART_PREFIX}{rank:05d}"


def is_cache(directory: Path) -> bool:
    """True when `directory` is a stream cache (so `dspark train --data DIR` reads all its parts)."""
    return (Path(directory) / CACHE_INFO_NAME).is_file()


def init_cache(cache_dir: Path, fp: dict[str, Any]) -> CacheInfo:
    """Create or check `cache.json` for parts written with store fingerprint `fp` (`store.hidden_fingerprint`);
    a cache made with other settings is refused with the differences."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = CacheInfo(fingerprint_hash=fingerprint_of(fp), fingerprint=fp, created_at=utc_now())
    path = cache_dir / CACHE_INFO_NAME
    if path.is_file():
        have = CacheInfo.model_validate_json(path.read_text())
        if have.format != CACHE_FORMAT or have.fingerprint_hash != wanted.fingerprint_hash:
            keys = sorted(set(fp) | set(have.fingerprint))
            diffs = [f"{k}: {have.fingerprint.get(k)!r} -> {fp.get(k)!r}" for k in keys
                     if have.fingerprint.get(k) != fp.get(k)]
            raise StoreError(f"{cache_dir} caches samples made with other settings ({'; '.join(diffs)}); "
                             "choose another --cache-dir")
        return have
    try:  # ranks may race here: each rename is atomic and they differ only in created_at
        atomic_write_bytes(path, (wanted.model_dump_json(indent=1) + "\n").encode())
    except FileNotFoundError:
        pass
    return wanted


def write_wanted(cache_dir: Path, rank: int, ids: set[str]) -> None:
    """Tell the other ranks which of their samples this rank is waiting for (empty set: none)."""
    directory = Path(cache_dir) / WANTED_DIR
    directory.mkdir(exist_ok=True)
    atomic_write_bytes(directory / f"{PART_PREFIX}{rank:05d}.json", json.dumps(sorted(ids)).encode())


def read_wanted(cache_dir: Path) -> set[str]:
    out: set[str] = set()
    for path in (Path(cache_dir) / WANTED_DIR).glob(f"{PART_PREFIX}*.json"):
        try:
            out.update(json.loads(path.read_text()))
        except (OSError, ValueError):  # replaced while we read it: the next look sees the new list
            pass
    return out


def cache_parts(cache_dir: Path) -> list[Path]:
    """The part directories holding a committed manifest, in rank order."""
    return sorted(p for p in Path(cache_dir).glob(f"{PART_PREFIX}*") if (p / MANIFEST_NAME).is_file())


def seed_dirs(cache_dir: Path) -> list[Path]:
    """The `part-i-of-N/` folders of a dump-hidden output used as the cache's seed ([] for none)."""
    return find_part_dirs(cache_dir)


def all_dirs(cache_dir: Path) -> list[Path]:
    """Every dataset the cache reads: the seed's parts, then the ranks' parts (what `verify` must hash)."""
    return [*seed_dirs(cache_dir), *cache_parts(cache_dir)]


def open_seed(cache_dir: Path, fingerprint: dict[str, Any]) -> Any | None:
    """The seed parts as one dataset, merge-checked, refused unless made with the stream's settings."""
    if not seed_dirs(cache_dir):
        return None
    seed = open_hidden_any(Path(cache_dir))  # every part present and complete, same settings, disjoint ids
    have = {k: v for k, v in seed.manifest.fingerprint.items() if k not in PART_KEYS}
    want = {k: v for k, v in fingerprint.items() if k not in PART_KEYS}
    if have != want:
        diffs = [f"{k}: {have.get(k)!r} (parts) vs {want.get(k)!r} (stream)" for k in sorted(set(have) | set(want))
                 if have.get(k) != want.get(k)]
        raise StoreError(f"{cache_dir}: its part-*-of-* folders were captured with other settings than this "
                         f"stream ({'; '.join(diffs)}); they cannot seed its cache. Choose another --cache-dir "
                         "or capture the seed with the same recipe, backend and --data")
    return seed


def error_ids(directories: list[Path]) -> set[str]:
    """Samples rejected in these datasets' committed `errors.jsonl` (kept out, as dump-hidden keeps them out)."""
    out: set[str] = set()
    for part in directories:
        errors = part / "errors.jsonl"
        if errors.is_file():
            with open(errors, "rb") as f:
                data = f.read(load_manifest(part).errors_bytes)
            out.update(json.loads(line)["id"] for line in data.decode().splitlines() if line.strip())
    return out


class PartsView:
    """The committed samples of every part (and of the seed), re-read when a part's manifest changes. Thread-safe."""

    def __init__(self, cache_dir: Path, seed: Any | None = None):
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self._lock = threading.Lock()
        self._stamp: dict[Path, tuple[int, int]] = {}
        self._sets: dict[Path, HiddenDataset] = {}
        self._where: dict[str, tuple[HiddenDataset, int]] = {}
        self._last = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False, min_interval_s: float = 0.2) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < min_interval_s:
                return
            self._last = now
            changed = False
            for part in cache_parts(self.cache_dir):
                st = (part / MANIFEST_NAME).stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if self._stamp.get(part) != stamp:
                    self._sets[part] = open_hidden(part)
                    self._stamp[part] = stamp
                    changed = True
            if changed:
                where: dict[str, tuple[HiddenDataset, int]] = {}
                for part in sorted(self._sets, reverse=True):  # lowest rank wins on a duplicate id
                    ds = self._sets[part]
                    where.update({sid: (ds, i) for i, sid in enumerate(ds.ids)})
                if self.seed is not None:  # the seed wins: its samples are never streamed
                    where.update({sid: (self.seed, i) for i, sid in enumerate(self.seed.ids)})
                self._where = where

    def error_ids(self) -> set[str]:
        """Samples some rank's server (or the seed's capture) rejected (kept out, as dump-hidden keeps them out)."""
        return error_ids(all_dirs(self.cache_dir) if self.seed is not None else cache_parts(self.cache_dir))

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._where

    def get(self, sample_id: str) -> HiddenSample | None:
        hit = self._where.get(sample_id)
        return None if hit is None else hit[0][hit[1]]


class CacheWriter:
    """This rank's part, written by one thread; `put` blocks when `max_queue` rows wait (disk back-pressure)."""

    def __init__(self, directory: Path, writer_kwargs: dict[str, Any], *, commit_s: float = 2.0, max_queue: int = 64):
        self.writer = HiddenStateWriter(directory, **writer_kwargs)
        self.directory = Path(directory)
        self.cache_dir = self.directory.parent
        self.commit_s = commit_s
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._pending: dict[str, StreamedRecord] = {}  # queued or written, not yet committed
        self._known: set[str] = set(self.writer.committed_ids)
        self._failure: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="dspark-cache-writer", daemon=True)
        self._thread.start()

    def pending(self, sample_id: str) -> StreamedRecord | None:
        with self._lock:
            return self._pending.get(sample_id)

    def has(self, sample_id: str) -> bool:
        """True once this part holds the sample (pending or committed, this run or an earlier one)."""
        with self._lock:
            return sample_id in self._known

    def put(self, record: StreamedRecord) -> None:
        """Queue a received sample for the part (ignored if this part already has it)."""
        self._raise_failure()
        sid = record.sample_id
        with self._lock:
            if sid in self._known:
                return
            self._known.add(sid)
            self._pending[sid] = record
        self._queue.put(("row", record))

    def record_error(self, sample_id: str, reason: str, detail: str) -> None:
        self._raise_failure()
        self._queue.put(("error", (sample_id, reason, detail)))

    def close(self) -> None:
        """Write and commit everything queued, mark the part complete, release its lock."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise StoreError(f"{self.directory}: the cache writer failed: {self._failure}") from self._failure

    def _run(self) -> None:
        last, dirty, committing, looked = time.monotonic(), False, [], 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=min(0.1, self.commit_s / 4))
                except queue.Empty:
                    item = ("idle", None)
                if item is None:
                    break
                kind, value = item
                if kind == "row":
                    self.writer.store.write_batch(value.batch, raw_bytes=[value.raw_bytes])
                    committing.append(value.sample_id)
                    dirty = True
                elif kind == "error":
                    self.writer.record_error(*value)
                    dirty = True
                now = time.monotonic()
                due = dirty and now - last >= self.commit_s
                if dirty and not due and now - looked >= 0.1:  # a peer waiting for one of ours: commit now
                    looked = now
                    due = not read_wanted(self.cache_dir).isdisjoint(committing)
                if due:
                    self._commit(committing)
                    last, dirty, committing = time.monotonic(), False, []
            self.writer.close()  # commits the tail and marks the part complete
            self._drop(committing)
        except BaseException as exc:  # surfaced to the trainer thread by the next put/close
            self._failure = exc
            self.writer.abort()

    def _commit(self, ids: list[str]) -> None:
        self.writer.commit()
        self._drop(ids)

    def _drop(self, ids: list[str]) -> None:
        with self._lock:
            for sid in ids:
                self._pending.pop(sid, None)
            self.written += len(ids)


class CacheDataset:
    """All parts of a cache as one read-only hidden-state dataset (what `open_hidden` is for one directory).

    Duck-types `HiddenDataset` (manifest, ids, lengths, ds[i]) so the trainer's `StoreSource` reads it.
    A sample id present in two parts (a rank gave up waiting for a peer and streamed it again) is read
    from the lowest rank's part. A seeded cache's `part-i-of-N/` samples come first (seed order: by id hash).
    """

    def __init__(self, cache_dir: Path):
        self.directory = Path(cache_dir)
        info = CacheInfo.model_validate_json((self.directory / CACHE_INFO_NAME).read_text())
        seed = open_seed(self.directory, info.fingerprint)
        parts = [*([seed] if seed is not None else []), *(open_hidden(p) for p in cache_parts(self.directory))]
        if not parts:
            raise StoreError(f"{cache_dir}: a stream cache without any committed part; stream first")
        ranks = [ds for ds in parts if ds is not seed]
        first = (ranks or parts)[0].manifest  # a rank part's: the stream's own fingerprint
        for ds in ranks[1:]:
            if ds.manifest.fingerprint_hash != ranks[0].manifest.fingerprint_hash:
                raise StoreError(f"{cache_dir}: parts were written with different settings; the cache is mixed")
        self._rows: list[tuple[HiddenDataset, int]] = []
        seen: set[str] = set()
        self.duplicates = 0
        for ds in parts:
            for i, sid in enumerate(ds.ids):
                if sid in seen:
                    self.duplicates += 1
                    continue
                seen.add(sid)
                self._rows.append((ds, i))
        self.ids: list[str] = [ds.ids[i] for ds, i in self._rows]
        self.lengths = np.array([int(ds.lengths[i]) for ds, i in self._rows], dtype=np.int64)
        self.manifest: Manifest = first.model_copy(deep=True)
        self.manifest.shards = []
        self.manifest.totals.samples = len(self.ids)
        self.manifest.totals.tokens = int(self.lengths.sum())
        self.manifest.complete = all(ds.manifest.complete for ds in parts)
        self.layer_ids = list(first.layer_ids or [])
        self.hidden_size, self.codec = int(first.hidden_size or 0), first.codec

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> HiddenSample:
        ds, row = self._rows[i]
        return ds[row]

    def get(self, i: int) -> HiddenSample:
        return self[i]

    def get_deferred(self, i: int) -> HiddenSample:
        ds, row = self._rows[i]
        return ds.get_deferred(row)


def open_cache(cache_dir: Path) -> CacheDataset:
    """Read a stream cache written by `dspark train --stream --cache-dir DIR` as one dataset."""
    if not is_cache(cache_dir):
        raise StoreError(f"{cache_dir}: no {CACHE_INFO_NAME}; not a stream cache")
    return CacheDataset(Path(cache_dir))
