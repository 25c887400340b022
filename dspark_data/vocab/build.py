"""`build_vocab`: the vocab stage, counting a dataset and writing the draft vocab it selects.

Outputs, in the vocab directory:

- `vocab.safetensors`: `d2t` int64 [N] with `d2t[i] = target_id(i) - i` (the offset form vLLM's
  EAGLE-3 style loaders read), `t2d` bool [V] marking kept target ids, `counts` int64 [V] (loss-masked
  count of every target id);
- `vocab.json` (`schemas.store.VocabManifest`, written before the summary) with the data fingerprint;
- `summary.json` (`schemas.summary.VocabSummary`; `cached: true` when an existing vocab with the same
  fingerprint is reused).

    result = build_vocab("runs/tiny/hidden", "runs/tiny/vocab", size=32000, target_vocab_size=V)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_safetensors

from dspark_data.atomic import atomic_write_bytes
from dspark_data.stage import Stage, execute, publish_summary
from dspark_data.store.manifest import StoreError, utc_now
from dspark_data.store.parts import open_any
from dspark_data.vocab.load import VOCAB_FILE, VOCAB_MANIFEST
from dspark_data.vocab.select import count_tokens, select_vocab, vocab_tensors
from schemas.base import fingerprint as fingerprint_of
from schemas.store import VocabManifest
from schemas.summary import VocabSummary


@dataclass
class VocabResult:
    out_dir: str
    draft_vocab_size: int
    target_vocab_size: int
    samples: int
    tokens: int
    coverage: float
    cached: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VocabStage(Stage[VocabResult]):
    """Count, select, write; complete when `vocab.json` records the fingerprint and the file matches its sha256."""

    def __init__(
        self,
        data_dir: Path,
        out_dir: Path,
        *,
        size: int,
        target_vocab_size: int | None,
        ids_column: str,
        mask_column: str,
    ) -> None:
        self.start = time.monotonic()
        self.data_dir, self.out_dir, self.size = data_dir, out_dir, size
        self.target_vocab_size = target_vocab_size
        self.columns = (ids_column, mask_column)
        self.data = open_any(data_dir, require_complete=True).manifest
        self.fp: dict[str, Any] = {}

    def fingerprint(self) -> str:
        m = self.data
        self.fp = {
            "data_kind": m.kind,
            "data_fingerprint": m.fingerprint_hash,
            "data_shards": [e.sha256 for e in m.shards],
            "size": self.size,
            "target_vocab_size": self.target_vocab_size,
            "columns": list(self.columns),
        }
        return fingerprint_of(self.fp)

    def cached(self, fingerprint: str) -> VocabResult | None:
        m = _load_cached(self.out_dir, fingerprint)
        if m is None:
            return None
        return self._publish(m.draft_vocab_size, m.target_vocab_size, m.samples, m.tokens, m.coverage, True)

    def run(self, fingerprint: str) -> VocabResult:
        ids_column, mask_column = self.columns
        counts, samples = count_tokens(
            self.data_dir, ids_column=ids_column, mask_column=mask_column, minlength=self.target_vocab_size or 0
        )
        if self.target_vocab_size is not None and counts.size > self.target_vocab_size:
            raise StoreError(
                f"{self.data_dir}: token id {counts.size - 1} >= target vocab size {self.target_vocab_size}; "
                "wrong target?"
            )
        kept = select_vocab(counts, self.size)
        total = int(counts.sum())
        coverage = round(float(counts[kept].sum() / total), 6) if total else 0.0
        blob = save_safetensors(vocab_tensors(counts, kept))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out_dir / VOCAB_FILE, blob)
        manifest = VocabManifest(
            fingerprint=self.fp,
            fingerprint_hash=fingerprint,
            data_dir=str(self.data_dir),
            data_kind=self.data.kind,
            draft_vocab_size=int(kept.size),
            target_vocab_size=int(counts.size),
            samples=samples,
            tokens=total,
            coverage=coverage,
            sha256=hashlib.sha256(blob).hexdigest(),
            created_at=utc_now(),
        )
        atomic_write_bytes(self.out_dir / VOCAB_MANIFEST, (manifest.model_dump_json(indent=1) + "\n").encode())
        return self._publish(int(kept.size), int(counts.size), samples, total, coverage, False)

    def _publish(
        self, draft: int, target: int, samples: int, tokens: int, coverage: float, cached: bool
    ) -> VocabResult:
        result = VocabResult(
            str(self.out_dir), draft, target, samples, tokens, coverage, cached, round(time.monotonic() - self.start, 3)
        )
        summary = {"stage": "vocab", **result.to_dict(), "coverage": round(result.coverage, 6)}
        publish_summary(self.out_dir, summary, schema=VocabSummary, indent=1)
        return result


def build_vocab(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int,
    target_vocab_size: int | None = None,
    ids_column: str = "input_ids",
    mask_column: str = "loss_mask",
) -> VocabResult:
    """Count, select and write the draft vocab (see the module docstring); reuse it when nothing changed.

    `target_vocab_size` (V) sizes `t2d` and `counts`; None takes the largest id seen + 1. If V < size, all
    V ids are kept.
    """
    return execute(
        VocabStage(
            Path(data_dir),
            Path(out_dir),
            size=size,
            target_vocab_size=target_vocab_size,
            ids_column=ids_column,
            mask_column=mask_column,
        )
    )


def _load_cached(out_dir: Path, fp_hash: str) -> VocabManifest | None:
    path, blob_path = out_dir / VOCAB_MANIFEST, out_dir / VOCAB_FILE
    if not path.is_file() or not blob_path.is_file():
        return None
    try:
        manifest = VocabManifest.model_validate_json(path.read_text())
    except ValueError:
        return None
    if manifest.fingerprint_hash != fp_hash:
        return None
    if hashlib.sha256(blob_path.read_bytes()).hexdigest() != manifest.sha256:
        return None
    return manifest
