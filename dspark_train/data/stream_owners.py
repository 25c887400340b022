"""Which rank streams each sample in hybrid mode: the rank that uses it first in the whole run.

A pure function of the sampler's inputs (seed, batch size, world size, epochs, validation split), so
every rank computes the same owners without talking to the others, and a restarted run the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from dspark_train.data.sampler import epoch_batches, eval_batches
from dspark_train.data.split import split_indices


def schedule_owners(
    ids: Sequence[str],
    lengths: Sequence[int],
    *,
    seed: int,
    batch_size: int,
    world_size: int,
    epochs: int,
    val_fraction: float,
) -> list[int]:
    """For every sample, the rank that uses it first in the run (the one that streams it in hybrid mode).

    Validation samples: their rank in the step-0 validation pass. Training samples: the rank whose batch
    holds them in the first epoch that schedules them (the loader's own `epoch_batches`). Samples no
    epoch schedules: index modulo world size.
    """
    train, val = split_indices(ids, val_fraction)
    owner = [-1] * len(ids)
    for r in range(world_size):
        for batch in eval_batches(val, lengths, batch_size=batch_size, world_size=world_size, rank=r):
            for i in batch:
                owner[i] = r
    for epoch in range(epochs):
        # One global order per epoch; rank r takes items r, r + W, ... of each global batch (sampler.py step 4).
        global_batches = epoch_batches(train, ids, lengths, seed=seed, epoch=epoch, batch_size=batch_size * world_size)
        for g in global_batches:
            for r in range(world_size):
                for i in g[r::world_size]:
                    if owner[i] < 0:
                        owner[i] = r
    return [o if o >= 0 else i % world_size for i, o in enumerate(owner)]
