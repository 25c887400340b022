"""Publish a directory atomically: a reader (or a rerun) always finds the old or the new complete directory.

A file can be replaced in one `rename`; a non-empty directory cannot (POSIX `rename` refuses to replace
one), so the usual "delete the old one, rename the new one in" leaves nothing under the final name if
the process dies between the two steps, and half a directory if it dies inside the delete.

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
import os
import shutil
from pathlib import Path

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


def backup_path(final: Path) -> Path:
    """Where the old content of `final` waits while the new one is renamed in (fallback path only)."""
    return final.parent / f"{BACKUP_PREFIX}{final.name}"


def fsync_tree(directory: Path) -> None:
    """fsync every regular file under `directory`, then every directory (deepest first)."""
    for root, _dirs, files in os.walk(directory, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
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
