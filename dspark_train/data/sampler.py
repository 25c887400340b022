"""Which samples each rank reads, in which batches: a pure function of (seed, epoch, world size, rank).

Nothing here keeps state or draws from a global RNG, so the order can be recomputed anywhere: a
resumed run rebuilds the epoch's batches and skips the ones already consumed, and the loader's whole
resume state is `(epoch, position)`.

How an epoch is laid out (`epoch_batches`):
1. Shuffle: sort the training indices by `derive_seed(seed, "order", epoch, sample_id)`. Keyed by id,
   the order does not depend on how the dataset is sharded or stored.
2. Equal work per rank: keep the first `n_global * world_size * batch_size` samples of that order
   (the few left over differ every epoch, so no sample is permanently skipped).
3. Length buckets: cut the order into windows of `bucket_batches` global batches, sort each window by
   length and cut it into global batches (little padding), then shuffle the batches of the window
   (no long-to-short pattern within an epoch).
4. Partition: inside a global batch (sorted by length), rank r takes items r, r + world, r + 2*world,
   ... so ranks get disjoint batches of equal size and similar token counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from dspark_data.seeding import derive_seed

BUCKET_BATCHES = 8  # global batches per length-sorting window: padding vs. randomness


def shuffled(indices: Sequence[int], ids: Sequence[str], seed: int, epoch: int) -> list[int]:
    """`indices` ordered by a hash of (seed, epoch, sample id): a seeded shuffle with no RNG state."""
    return sorted(indices, key=lambda i: (derive_seed(seed, "order", epoch, ids[i]), i))


def epoch_batches(
    indices: Sequence[int],
    ids: Sequence[str],
    lengths: Sequence[int],
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    bucket_batches: int = BUCKET_BATCHES,
) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) for one epoch; the same count on every rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    order = shuffled(indices, ids, seed, epoch)
    global_size = batch_size * world_size
    n_global = len(order) // global_size
    order = order[: n_global * global_size]
    window = global_size * max(1, bucket_batches)
    batches: list[list[int]] = []
    for w, start in enumerate(range(0, len(order), window)):
        chunk = sorted(order[start : start + window], key=lambda i: (lengths[i], ids[i]))
        globals_ = [chunk[j : j + global_size] for j in range(0, len(chunk), global_size)]
        globals_.sort(key=lambda b: derive_seed(seed, "bucket", epoch, w, ids[b[0]]))
        batches.extend(g[rank::world_size] for g in globals_)
    return batches


def eval_batches(
    indices: Sequence[int], lengths: Sequence[int], *, batch_size: int, world_size: int = 1, rank: int = 0
) -> list[list[int]]:
    """This rank's validation batches: every sample exactly once over all ranks, sorted by length.

    Ranks may hold fewer samples than others; they get the same *number* of batches (possibly empty
    lists) so collective-using forwards (FSDP) stay in step. An empty batch contributes nothing.
    """
    order = sorted(indices, key=lambda i: (lengths[i], i))
    mine = order[rank::world_size]
    per_rank = -(-len(order) // world_size) if order else 0
    n_batches = -(-per_rank // batch_size)
    return [mine[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]
