"""Reading a built draft vocab back: its tensors, checked against `vocab.json`, and the trainer's view of it.

Why here, beside the builder: the files `dspark vocab` writes and the checks made when reading them are one
format, so they change together. Two readers: `read_vocab_tensors` (the three tensors, as written) and
`load_draft_vocab` (what the trainer needs: `t2d`/`d2t` checked against the target and the recipe).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from dspark_data.mismatch import DataMismatch
from schemas.store import VocabManifest

VOCAB_FILE = "vocab.safetensors"
VOCAB_MANIFEST = "vocab.json"


@dataclass(frozen=True)
class DraftVocab:
    t2d: torch.Tensor  # bool (V,)
    d2t: torch.Tensor  # int64 (D,)
    fingerprint: str  # sha256 (16 hex) of the vocab file, "full" when the whole target vocab is used


def read_vocab_tensors(out_dir: str | Path) -> dict[str, torch.Tensor]:
    """`d2t`, `t2d`, `counts` of the vocab `dspark vocab` wrote into `out_dir`, checked against its sha256."""
    return load_safetensors(checked_vocab_bytes(Path(out_dir) / VOCAB_FILE))


def load_draft_vocab(path: Path | None, *, target_vocab_size: int, draft_vocab_size: int) -> DraftVocab:
    """Read `vocab.safetensors` (from `dspark vocab`) and check it against the target and recipe.

    Without a file, a draft vocab as large as the target's is the identity (every id kept).
    """
    if path is None:
        if draft_vocab_size != target_vocab_size:
            raise DataMismatch(
                f"no draft vocab file, but vocab.draft_vocab_size={draft_vocab_size} is smaller than the target's "
                f"{target_vocab_size}: run `dspark vocab` first, then pass --vocab DIR (or keep it beside --data)"
            )
        return DraftVocab(
            torch.ones(target_vocab_size, dtype=torch.bool), torch.zeros(target_vocab_size, dtype=torch.long), "full"
        )
    blob = checked_vocab_bytes(Path(path))
    tensors = load_safetensors(blob)
    t2d, d2t = tensors["t2d"].bool(), tensors["d2t"].long()
    if t2d.numel() != target_vocab_size:
        raise DataMismatch(
            f"draft vocab {path} covers a target vocab of {t2d.numel()} ids, but the target has "
            f"vocab_size={target_vocab_size}: rebuild it with `dspark vocab` for this target"
        )
    if d2t.numel() != draft_vocab_size or int(t2d.sum()) != draft_vocab_size:
        raise DataMismatch(
            f"draft vocab {path} has {d2t.numel()} entries, but the recipe asks vocab.draft_vocab_size="
            f"{draft_vocab_size}: rebuild it with `dspark vocab --size {draft_vocab_size}` or change the recipe"
        )
    expected = t2d.nonzero().squeeze(-1) - torch.arange(draft_vocab_size)
    if not torch.equal(expected, d2t):
        raise DataMismatch(f"draft vocab {path}: d2t does not agree with t2d (corrupt or foreign file)")
    return DraftVocab(t2d, d2t, hashlib.sha256(blob).hexdigest()[:16])


def checked_vocab_bytes(path: Path) -> bytes:
    """The vocab file's bytes, after checking them against the sha256 `dspark vocab` recorded in vocab.json.

    A vocab is part of the training input like the shards are: a file changed after it was built (a bad
    copy, an edit, bit rot) would train a draft over the wrong ids without any other check noticing.
    """
    manifest_path = path.parent / VOCAB_MANIFEST
    if not manifest_path.is_file():
        raise DataMismatch(
            f"draft vocab {path}: no vocab.json beside it (written by `dspark vocab` with its "
            "checksum): pass a directory `dspark vocab` wrote, or rebuild it"
        )
    try:
        manifest = VocabManifest.model_validate_json(manifest_path.read_text())
    except ValueError as exc:
        raise DataMismatch(f"draft vocab manifest {manifest_path} is not valid: {exc}") from None
    blob = path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != manifest.sha256:
        raise DataMismatch(
            f"draft vocab {path}: sha256 {actual[:16]}... does not match {manifest.sha256[:16]}... "
            f"recorded in {manifest_path} (changed or damaged after `dspark vocab`): rebuild it"
        )
    return blob
