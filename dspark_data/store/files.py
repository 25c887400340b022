"""File-level pieces of the store: our file names, sha256 of files and streams, the writer lock.

Every file the store publishes goes through `dspark_data.atomic` (temp file in the same directory,
fsync, rename, fsync of the directory), so a reader or a resumed writer never sees a half-written file
under a final name. Peers that resume by "file exists" count truncated files as done; here only the
manifest decides what exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

SHARD_RE = re.compile(r"^shard-(\d{5,})\.(arrow|index\.arrow)$")
LOCK_NAME = ".writer.lock"
_CHUNK = 8 << 20


def shard_name(n: int) -> str:
    """Zero-padded shard file name, so a directory listing sorts in row order."""
    return f"shard-{n:05d}.arrow"


def index_name(n: int) -> str:
    """Per-sample index file of shard n."""
    return f"shard-{n:05d}.index.arrow"


def sha256_file(path: Path) -> str:
    """sha256 hex of a file's bytes, read in chunks (hashlib releases the GIL on large updates)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashingSink:
    """A write-only file object that hashes what passes through it, on a background thread.

    `file_hexdigest()` covers every byte of the file; `take_range_digest()` returns (as a future) the
    sha256 of the bytes written since its previous call, which is how each record batch gets its own
    checksum without a second read. Why a thread: hashing every byte twice is the costliest step of
    the write path, and hashlib releases the GIL, so it overlaps the writer's own work and the
    encoders'. Pieces are hashed in write order; Arrow hands over immutable `bytes` / `Buffer` objects,
    so keeping a reference until hashed is safe without copying.
    """

    _MAX_PENDING = 256  # pieces queued before `write` waits for the hasher (bounds memory)

    def __init__(self, f: IO[bytes]):
        self._f = f
        self._file_hash = hashlib.sha256()
        self._range = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="dspark-hash")
        self._pending: deque[Future[None]] = deque()
        self.position = 0
        self.closed = False

    def _update(self, data: bytes | memoryview) -> None:
        self._file_hash.update(data)
        self._range.update(data)

    def _take_range(self) -> bytes:
        digest = self._range.digest()
        self._range = hashlib.sha256()
        return digest

    def write(self, data: bytes | memoryview) -> int:
        mv = memoryview(data)
        self._f.write(mv)
        self._pending.append(self._hasher.submit(self._update, data))
        while len(self._pending) > self._MAX_PENDING or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()  # also surfaces a hashing error
        self.position += mv.nbytes
        return mv.nbytes

    def take_range_digest(self) -> Future[bytes]:
        return self._hasher.submit(self._take_range)

    def file_hexdigest(self) -> str:
        """sha256 hex of everything written (waits for the hasher; call after the last write)."""
        digest = self._hasher.submit(self._file_hash.hexdigest).result()
        self._pending.clear()
        self._hasher.shutdown(wait=True)
        return digest

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:  # pyarrow may close its wrapper; the underlying file is closed by its owner
        self.closed = True

    def discard(self) -> None:
        """Stop the hasher without waiting for a digest (the file is being thrown away)."""
        self._hasher.shutdown(wait=True, cancel_futures=True)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False


class WriterLock:
    """An exclusive advisory lock on a dataset directory, so two writers never interleave commits."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        # O_NOFOLLOW: a planted symlink must not make the writer truncate a file outside the dataset
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another process is writing {self.path.parent} (lock {self.path} is held); "
                "wait for it or write elsewhere with --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
