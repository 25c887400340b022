"""The draft vocabulary stage: the N target tokens the draft predicts, chosen by loss-masked frequency.

Why loss-masked: the draft only ever proposes tokens the target generates (assistant turns), so prompt
tokens must not steer the choice. Selection is deterministic: count every loss-masked token of a regen
or hidden-state dataset, keep the top N by count with ties broken by the lower id, and sort the kept ids
ascending.

- `select.py`: counting and the top-N selection (also used by the trainer's synthetic runs);
- `build.py`: `build_vocab`, the stage (`dspark vocab`) writing `vocab.safetensors`, `vocab.json`, `summary.json`;
- `load.py`: reading it back, checked against `vocab.json` (`read_vocab_tensors`; the trainer's `load_draft_vocab`).
"""

from dspark_data.vocab.build import VocabResult, build_vocab
from dspark_data.vocab.load import VOCAB_FILE, VOCAB_MANIFEST, DraftVocab, load_draft_vocab, read_vocab_tensors
from dspark_data.vocab.select import count_tokens, select_vocab, vocab_tensors

__all__ = [
    "VOCAB_FILE",
    "VOCAB_MANIFEST",
    "DraftVocab",
    "VocabResult",
    "build_vocab",
    "count_tokens",
    "load_draft_vocab",
    "read_vocab_tensors",
    "select_vocab",
    "vocab_tensors",
]
