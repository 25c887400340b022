"""Held-out split by sample-id hash.

A sample is in validation iff a hash of its id falls below `val_fraction`. Being a function of the id
alone (not of the run seed), the split does not move when the dataset grows, is re-sharded or
reordered, or the run seed changes (so runs with different seeds are compared on the same held-out
samples), and every rank computes the same split without communicating.
"""

from __future__ import annotations

from collections.abc import Sequence

from dspark_data.seeding import derive_seed

_BITS = 53


def _key(sample_id: str) -> int:
    return derive_seed(0, "val-split", sample_id, bits=_BITS)


def is_validation(sample_id: str, val_fraction: float) -> bool:
    """True when `sample_id` belongs to the held-out split."""
    if val_fraction <= 0:
        return False
    return _key(sample_id) < val_fraction * (1 << _BITS)


def split_indices(ids: Sequence[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), each ascending.

    When the hash puts nothing in validation although a fraction was asked (tiny datasets), the sample
    with the smallest hash is moved there so validation is never silently empty.
    """
    train: list[int] = []
    val: list[int] = []
    for i, sid in enumerate(ids):
        (val if is_validation(sid, val_fraction) else train).append(i)
    if val_fraction > 0 and not val and len(train) > 1:
        pick = min(train, key=lambda i: _key(ids[i]))
        train.remove(pick)
        val.append(pick)
    return train, val
