"""Where dspark keeps machine-local caches (built tiny targets, and anything else rebuilt on demand).

One function so that every cache honours the same override: `$DSPARK_CACHE`, else `~/.cache/dspark`.
Tests point `DSPARK_CACHE` at a temporary directory to build from scratch.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The dspark cache root: `$DSPARK_CACHE` when set and non-empty, else `~/.cache/dspark` (not created here)."""
    override = os.environ.get("DSPARK_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "dspark"
