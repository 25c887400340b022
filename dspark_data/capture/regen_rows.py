"""What capture feeds the target from a regen row: its tokens and loss mask, cut at the recipe's seq_len.

One definition for `dump-hidden` and `train --stream` (which sends the same cut conversation to a
gateway): if the two cut differently, a streamed sample would not be the dumped one and a dump could not
seed a stream cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def capture_row(regen: Any, index: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Row `index` of a regen dataset (`store.ShardDataset`): (input_ids int64, loss_mask bool), both cut at
    `seq_len`. Reads only these two columns (a regen row also holds the messages)."""
    batch, r = regen.record(index)
    ids = batch.column("input_ids")[r].values.to_numpy()[:seq_len].astype(np.int64)
    mask = batch.column("loss_mask")[r].values.to_numpy(zero_copy_only=False)[:seq_len].astype(bool)
    return ids, mask


def capture_lengths(regen: Any, seq_len: int) -> np.ndarray:
    """Every row's token count as captured (cut at `seq_len`), from the dataset's index: no row is read."""
    return np.minimum(np.asarray(regen.lengths, dtype=np.int64), seq_len)
