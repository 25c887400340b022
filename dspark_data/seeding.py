"""Seeds derived from (run seed, names...), never from wall clock or worker scheduling.

Every random choice in dspark (per-sample generation seeds, anchor sampling, shuffles) draws its seed
here, so a rerun with the same inputs makes the same choices regardless of ordering or parallelism.
"""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, *parts: object, bits: int = 63) -> int:
    """A stable non-negative integer seed from the run seed and any identifying parts.

    Example: `derive_seed(seed, "anchors", sample_id, epoch)`. Uses sha256 so it does not depend on
    Python's per-process hash randomisation.
    """
    text = "\x1f".join([str(run_seed), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)
