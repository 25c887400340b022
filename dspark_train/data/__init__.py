"""The training data pipeline over hidden-state shards: split, order, anchors, collate, prefetch.

Reads samples only through `HiddenSource` (the store's `open_hidden` dataset, adapted by
`StoreSource`). Everything that decides what a batch contains is a pure function of the run seed, the
epoch, the world size and the rank; see docs/training.md.
"""

from dspark_data.store.hidden import HiddenSample
from dspark_train.data.anchors import anchor_span, candidate_anchors, sample_anchors
from dspark_train.data.collate import Batch, collate
from dspark_train.data.hidden_source import (
    HiddenSource,
    SourceInfo,
    StoreSource,
    SyntheticHiddenSource,
    open_source,
)
from dspark_train.data.loader import LoaderConfig, Prefetcher, TrainLoader, eval_loader
from dspark_train.data.sampler import epoch_batches, eval_batches
from dspark_train.data.split import is_validation, split_indices

__all__ = [
    "Batch",
    "HiddenSample",
    "HiddenSource",
    "LoaderConfig",
    "Prefetcher",
    "SourceInfo",
    "StoreSource",
    "SyntheticHiddenSource",
    "TrainLoader",
    "anchor_span",
    "candidate_anchors",
    "collate",
    "epoch_batches",
    "eval_batches",
    "eval_loader",
    "is_validation",
    "open_source",
    "sample_anchors",
    "split_indices",
]
