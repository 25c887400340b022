"""The hand-off between vLLM's worker (our KV connector) and the capture driver: a spool directory.

Why a spool directory: the connector runs inside the engine's worker process, the driver in ours. A
safetensors file per request, written to a temp name and renamed, gives an atomic, pickle-free hand-off
that works the same for in-process and multi-process engines. Put the spool on tmpfs (`/dev/shm`) and the
"file" is shared memory with a name. The driver reads each file once and deletes it, so the spool holds
only the requests of the batch in flight.

A worker that fails to write leaves `<name>.err` (JSON with the message) so the driver fails fast
instead of waiting for a file that will never come.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dspark_data.atomic import atomic_write, pid_alive
from schemas.capture import (
    SPOOL_ERROR_SUFFIX,
    SPOOL_FORMAT,
    SPOOL_HIDDEN,
    SPOOL_META_FORMAT,
    SPOOL_META_LAYER_IDS,
    SPOOL_TOKEN_IDS,
)

SPOOL_PREFIX = "dspark-spool-"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SpoolError(RuntimeError):
    """A capture file never arrived, arrived broken, or the worker reported a failure writing it."""


@dataclass(frozen=True)
class SpoolRecord:
    """One request's capture as the worker wrote it: engine-order layers, engine-seen token ids."""

    hidden: torch.Tensor  # (T, L_engine, H), the engine's dtype
    token_ids: torch.Tensor  # (T,) int64
    layer_ids: tuple[int, ...]  # engine order (ascending), as the worker saw them


def spool_path(spool_dir: str | os.PathLike[str], request_id: str) -> Path:
    """The file a request's states land in (request ids may hold characters unsafe in a file name)."""
    return Path(spool_dir) / f"{_SAFE.sub('_', request_id)}.safetensors"


def default_spool_root() -> Path:
    """tmpfs when the machine has it (no disk traffic for a transient copy), else the system temp dir."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def make_spool_dir(root: Path | None = None) -> Path:
    """A fresh spool directory named after this process, after removing those of dead processes.

    A driver killed with SIGKILL cannot clean up, and a tmpfs spool would otherwise hold its last
    records in memory until reboot; the next capture on the machine reaps it.
    """
    root = root or default_spool_root()
    for stale in root.glob(f"{SPOOL_PREFIX}*-*"):
        pid = stale.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=root))


def write_record(path: Path, hidden: torch.Tensor, token_ids: torch.Tensor, layer_ids: tuple[int, ...]) -> None:
    """Write atomically: a reader sees either no file or the whole file (not durable: the spool dies with the run)."""
    try:
        tensors = {SPOOL_HIDDEN: hidden.contiguous(), SPOOL_TOKEN_IDS: token_ids.to(torch.int64).contiguous()}
        metadata = {SPOOL_META_FORMAT: SPOOL_FORMAT, SPOOL_META_LAYER_IDS: json.dumps(list(layer_ids))}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), durable=False)
    except BaseException as exc:
        write_error(path, f"{type(exc).__name__}: {exc}")
        raise


def write_error(path: Path, message: str) -> None:
    """Record that the request's states will not come, and why."""
    err = path.with_name(path.name + SPOOL_ERROR_SUFFIX)
    atomic_write(err, lambda tmp: tmp.write_text(json.dumps({"error": message})), durable=False)


def read_spool_file(path: Path) -> SpoolRecord:
    """Load one record (copied into memory) after checking it is one of ours."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get(SPOOL_META_FORMAT) != SPOOL_FORMAT:
            raise SpoolError(f"{path}: not a dspark spool file (format={meta.get(SPOOL_META_FORMAT)!r})")
        return SpoolRecord(
            hidden=f.get_tensor(SPOOL_HIDDEN),
            token_ids=f.get_tensor(SPOOL_TOKEN_IDS),
            layer_ids=tuple(json.loads(meta[SPOOL_META_LAYER_IDS])),
        )


def take_record(
    path: Path,
    timeout_s: float = 600.0,
    alive: Callable[[], bool] | None = None,
) -> SpoolRecord:
    """Wait for a record, read it and delete it.

    The worker writes after the request is reported finished (the copy out of the KV cache happens on the
    engine's next step), so the driver may get here first: poll with a short back-off. `alive` lets the
    caller stop waiting when the engine has died.
    """
    err = path.with_name(path.name + SPOOL_ERROR_SUFFIX)
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while not path.exists():
        if err.exists():
            message = json.loads(err.read_text()).get("error", "?")
            err.unlink(missing_ok=True)
            raise SpoolError(f"the engine could not write {path.name}: {message}")
        if time.monotonic() > deadline:
            raise SpoolError(f"timed out after {timeout_s:.0f}s waiting for {path}")
        if alive is not None and not alive():
            raise SpoolError(f"the engine stopped before writing {path}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:
        return read_spool_file(path)
    finally:
        path.unlink(missing_ok=True)
