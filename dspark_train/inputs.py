"""Everything the trainer reads before it builds a model: the target's facts and head, the draft vocab,
the hidden-state data, and the checks that they belong together.

Kept apart from the trainer so the checks (and the fingerprints that decide caching and resume) run
before any model is built, and so the benchmark can build the same inputs from synthetic data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspark_data.mismatch import DataMismatch
from dspark_data.targets import TargetInfo, load_target_info, resolve_target
from dspark_data.targets.weights import TargetHead, load_target_head
from dspark_data.vocab import DraftVocab, load_draft_vocab, select_vocab, vocab_tensors
from dspark_train.data import HiddenSource, SyntheticHiddenSource, open_source
from dspark_train.data.checks import LayerSlots, check_hidden, layer_slots
from schemas.recipe import Recipe


@dataclass
class TrainInputs:
    target_dir: str
    target_info: TargetInfo
    source: HiddenSource
    slots: LayerSlots
    vocab: DraftVocab
    data_where: str  # the data directory, or "synthetic:N"
    checks: list[Any] = dataclasses.field(default_factory=list)  # IntegrityCheck per dataset: log, remember()

    def target_fingerprint(self) -> dict[str, Any]:
        """The target's identity for the plan fingerprint: its config facts (not its local path)."""
        info = dataclasses.asdict(self.target_info)
        return {k: info[k] for k in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size",
                                     "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps")}


def synthetic_vocab(source: HiddenSource, target_vocab_size: int, size: int, indices: list[int]) -> DraftVocab:
    """The `size` most frequent loss-masked tokens of `indices`, selected as `dspark vocab` selects them."""
    counts = np.zeros(target_vocab_size, dtype=np.int64)
    for i in indices:
        s = source.get(i)
        counts += np.bincount(s.input_ids[s.loss_mask].numpy(), minlength=target_vocab_size)
    tensors = vocab_tensors(counts, select_vocab(counts, size))
    return DraftVocab(tensors["t2d"], tensors["d2t"], f"synthetic-{size}")


def load_inputs(
    recipe: Recipe,
    *,
    data_dir: Path | None,
    vocab_path: Path | None,
    synthetic: int | None = None,
    stream: Any = None,
    rank: int = 0,
    world_size: int = 1,
    skip_samples: tuple[str, ...] = (),
    train_dir: Path | None = None,
) -> TrainInputs:
    """Resolve the target, open the data (or make `synthetic` samples), load the vocab, check them together.

    Raises `DataMismatch` (a ValueError) naming the layer, hidden size or vocab that does not fit, and
    `CorruptData` (one of them) when the dataset fails `dspark verify` outside `skip_samples`. A passed
    integrity check can be remembered in `train_dir` (`checks[i].remember()`, once the run is accepted), so a
    resume over unchanged files does not repeat it.
    """
    if skip_samples and (stream is not None or synthetic is not None):  # it used to be silently ignored there
        raise DataMismatch(
            "--skip-samples leaves damaged samples of a stored hidden-state dataset out of training; with "
            f"{'--stream' if stream is not None else '--synthetic'} no stored samples are read: drop --skip-samples"
        )
    if synthetic is None and data_dir is None:
        raise FileNotFoundError(
            "no hidden-state data given: pass --data DIR (the directory `dspark dump-hidden` wrote; with --stream "
            "the regen dataset)"
        )
    if synthetic is None and not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"hidden-state data {data_dir} not found: run `dspark dump-hidden` first or pass --data DIR"
        )
    target_dir = resolve_target(recipe.target.model)  # may build a tiny target (cached): after the cheap checks
    info = load_target_info(target_dir, recipe.target.revision)
    n_layers = info.num_hidden_layers
    checks: list[Any] = []
    draft_vocab = min(recipe.vocab.draft_vocab_size, info.vocab_size)
    if synthetic is not None:
        source: HiddenSource = SyntheticHiddenSource(
            synthetic,
            layer_ids=[*recipe.capture.aux_layers, n_layers],
            hidden_size=info.hidden_size,
            vocab_size=info.vocab_size,
            min_len=max(16, recipe.seq_len // 4),
            max_len=recipe.seq_len,
            seed=recipe.seed,
        )
        where = f"synthetic:{synthetic}"
    elif stream is not None:  # hidden states from `dspark serve-target`; data_dir is the regen dataset
        from dspark_train.data.stream_open import open_stream_source

        source = open_stream_source(recipe, stream, data_dir=Path(data_dir or ""), num_hidden_layers=n_layers,
                                    hidden_size=info.hidden_size, rank=rank, world_size=world_size)
        where = f"stream:{','.join(stream.endpoints)} ({data_dir})"
    else:
        # refuses corrupt data (rank 0 reads)
        source = open_source(data_dir, skip=skip_samples, verify=rank == 0, record_dir=train_dir, checks=checks)
        where = str(data_dir)
    capture = recipe.capture
    slots = layer_slots(source.info.layer_ids, capture.aux_layers, n_layers, where,
                        include_last_layer=capture.include_last_layer, topk=capture.topk_logprobs,
                        stored_topk=source.info.topk_logprobs)
    check_hidden(source, hidden_size=info.hidden_size, vocab_size=info.vocab_size, where=where)
    if synthetic is not None and vocab_path is None and draft_vocab < info.vocab_size:
        vocab = synthetic_vocab(source, info.vocab_size, draft_vocab, list(range(len(source))))
    else:
        vocab = load_draft_vocab(vocab_path, target_vocab_size=info.vocab_size, draft_vocab_size=draft_vocab)
    return TrainInputs(target_dir, info, source, slots, vocab, where, checks)


def load_head(target_dir: str, device: torch.device, revision: str | None = None) -> TargetHead:
    """The target's embedding, final norm and lm_head (at `revision`, the recipe's `target.revision`): fp32 on
    CPU (exact, deterministic), as stored on GPU."""
    head = load_target_head(target_dir, revision=revision)
    return head.to(device=device, dtype=torch.float32 if device.type == "cpu" else None)
