"""Atomic files and atomic directory publishing: the one place that renames something into place.

Why one module: every stage promises that a reader, a rerun or a resume never sees a half-written file
or directory under its final name, and that a published name survives a power cut (the new bytes and
the rename are both fsynced). Written once here, the promise cannot drift between writers.

Files (`atomic_write_bytes`, `atomic_write`): write a temp file `.tmp-<name>.<pid>@<host>` in the same
directory, fsync it, `rename` it over the final name, fsync the directory. `publish_file` is the last
two steps, for a writer that streams into its own temp file (the store's shards).

Directories: a file can be replaced in one `rename`; a non-empty directory cannot (POSIX `rename`
refuses to replace one), so the usual "delete the old one, rename the new one in" leaves nothing under
the final name if the process dies between the two steps, and half a directory if it dies inside the
delete.

`publish_dir(tmp, final)`:
1. fsync every file in `tmp` and `tmp` itself (the new content is durable before any name changes);
2. no `final` yet: `rename(tmp, final)`;
3. else, on Linux, `renameat2(tmp, final, RENAME_EXCHANGE)` swaps the two names in one step, then the
   old content (now under `tmp`'s name) is deleted;
4. else (no renameat2, or a file system without it): `rename(final, backup)`, `rename(tmp, final)`,
   delete `backup`. Killed between the two renames, `final` is missing and `backup` holds the old
   complete directory;
5. every rename is made durable with an fsync of the parent directory.

`recover_dir(final)` repairs what a kill in step 4 left: `backup` without `final` is renamed back;
`backup` beside a complete `final` (killed while deleting it) is deleted. Readers of published
directories (checkpoints, exports) and `publish_dir` itself call it first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO

TMP_PREFIX = ".tmp-"  # every temp file and temp directory beside its final name starts so
BACKUP_PREFIX = ".old-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (no-op where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(f: IO[bytes]) -> None:
    """Flush an open file and make its bytes durable."""
    f.flush()
    os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """Make the bytes of a closed file durable (for writers that take a path, e.g. safetensors)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(final: Path) -> Path:
    """The temp name a directory is built under before `publish_dir` (same parent: rename stays atomic)."""
    return final.parent / f"{TMP_PREFIX}{final.name}"


def publish_file(tmp: Path, final: Path, *, durable: bool = True) -> None:
    """Rename a fully written (and, when durable, fsynced) temp file to its final name; fsync the directory."""
    os.replace(tmp, final)
    if durable:
        fsync_dir(final.parent)


def _temp_file(path: Path) -> Path:
    """This process's temp name for `path`, `.tmp-<name>.<pid>@<host>`, after removing the temps of `path`
    that dead writers on this machine left.

    Why here: a writer SIGKILLed between creating its temp file and the rename leaves its temp behind, and a
    rerun that rewrites `path` (e.g. a stage's `summary.json`, rewritten when the stage is found complete and
    cached) would otherwise leave it there for good, where `dspark verify` reports it. The host is in the
    name because directories may be shared between machines (ranks racing on a stream cache's `cache.json`):
    a pid can only be checked on its own host, so another host's temp, and a live writer's, are left alone."""
    prefix = f"{TMP_PREFIX}{path.name}."
    host = socket.gethostname()
    for old in path.parent.glob(f"{glob.escape(prefix)}*@{glob.escape(host)}"):
        pid = old.name[len(prefix) : -len(host) - 1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            old.unlink(missing_ok=True)
    return path.parent / f"{prefix}{os.getpid()}@{host}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write(path: Path, write: Callable[[Path], None], *, durable: bool = True) -> None:
    """Have `write(tmp)` create the file at a temp path beside `path`, then rename it into place.

    `durable=False` skips both fsyncs, for hand-off files that live on tmpfs and die with the run (the
    capture spool): still atomic for a concurrent reader, not for a power cut. A failed `write` removes
    its temp file and re-raises.
    """
    tmp = _temp_file(path)
    try:
        write(tmp)
        if durable:
            fsync_path(tmp)
        publish_file(tmp, path, durable=durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = _temp_file(path)
    with open(tmp, "wb") as f:
        f.write(data)
        fsync_file(f)
    publish_file(tmp, path)


def backup_path(final: Path) -> Path:
    """Where the old content of `final` waits while the new one is renamed in (fallback path only)."""
    return final.parent / f"{BACKUP_PREFIX}{final.name}"


def fsync_tree(directory: Path) -> None:
    """fsync every regular file under `directory`, then every directory (deepest first)."""
    for root, _dirs, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_dir(Path(root))


def _load_renameat2():
    """libc's renameat2 (glibc >= 2.28), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one atomic step; False where the OS or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def recover_dir(final: Path) -> None:
    """Undo what a publish killed half-way left behind (see the module docstring); a no-op otherwise."""
    final = Path(final)
    backup = backup_path(final)
    if not backup.exists():
        return
    if final.exists():
        shutil.rmtree(backup)  # killed while deleting the old content: the new one is complete
    else:
        os.rename(backup, final)  # killed between the renames: the old content comes back
    fsync_dir(final.parent)


def publish_dir(tmp: Path, final: Path) -> None:
    """Make the fully written directory `tmp` (same parent as `final`) the content of `final`."""
    tmp, final = Path(tmp), Path(final)
    if tmp.parent.resolve() != final.parent.resolve():
        raise ValueError(f"{tmp} and {final} must share a parent directory (rename is atomic only within one)")
    recover_dir(final)
    fsync_tree(tmp)
    if not final.exists():
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return
    if exchange(tmp, final):
        fsync_dir(final.parent)
        shutil.rmtree(tmp)  # the old content, under the temp name now
        return
    backup = backup_path(final)
    os.rename(final, backup)
    fsync_dir(final.parent)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(backup)
