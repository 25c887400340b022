"""Content-addressed, atomic, concurrency-safe build cache for locally built artefacts (tiny targets).

An entry lives at `cache_dir()/targets/<name>-<fingerprint(spec)>/`. The spec holds everything the
output depends on (a code-version constant, sizes, seeds, Python version), so a changed builder gets a
new directory instead of silently reusing a stale one.

Commit protocol: build into a private temp directory next to the entry, write `build.json` last, then
publish it (`dspark_data.atomic.publish_dir`); the directory's existence is the commit point, so a killed
build leaves only a temp directory (cleaned by the next builder). A per-entry `fcntl` lock makes concurrent
builders (tests in several processes, several engineers sharing a cache) wait for the first instead of all
building.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dspark_data.atomic import TMP_PREFIX, atomic_write_bytes, publish_dir
from dspark_data.paths import cache_dir
from schemas import fingerprint

BUILD_RECORD = "build.json"


def entry_dir(name: str, spec: dict[str, Any]) -> Path:
    return cache_dir() / "targets" / f"{name}-{fingerprint(spec)}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_build(name: str, spec: dict[str, Any], build: Callable[[Path], dict[str, Any] | None]) -> Path:
    """Return the entry for (name, spec), calling `build(tmp_dir)` once if it does not exist yet.

    `build` writes the artefact into `tmp_dir` and may return extra facts (timings, loss curve) that are
    stored with the spec in `build.json`.
    """
    final = entry_dir(name, spec)
    if (final / BUILD_RECORD).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if (final / BUILD_RECORD).is_file():  # another process built it while we waited
            return final
        for stale in final.parent.glob(f"{TMP_PREFIX}{final.name}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
        try:
            start = time.monotonic()
            facts = build(tmp) or {}
            record = {"name": name, "fingerprint": final.name.rsplit("-", 1)[1], "spec": spec, **facts}
            record["build_seconds"] = round(time.monotonic() - start, 2)
            atomic_write_bytes(tmp / BUILD_RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
            _share(tmp)
            publish_dir(tmp, final)  # an incomplete entry from an older protocol is replaced whole
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def read_build_record(path: str | Path) -> dict[str, Any] | None:
    record = Path(path) / BUILD_RECORD
    return json.loads(record.read_text()) if record.is_file() else None


def _share(directory: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files); a shared cache should be readable by all."""
    os.chmod(directory, 0o755)
    for child in directory.iterdir():
        os.chmod(child, 0o755 if child.is_dir() else 0o644)
