"""Small inputs for the reliability tests (no tests here), and the `--set` lists of each stage's tiny run.

Everything is a pure function of its arguments, so every test (and a rerun of it) sees the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from regen_schema import REGEN_SCHEMA

from dspark_data.store import HiddenStateWriter, ShardWriter

AUX = [1, 3, 5]
LAYERS = [*AUX, 6]  # tiny:random has 6 layers: aux ids + the last layer id N
HIDDEN = 128
VOCAB = 2048


def write_prompts(path: Path, n: int) -> Path:
    """`n` UltraChat-shaped prompts plus two bad rows (no user turn, unknown role)."""
    rows = [
        {"prompt_id": f"q{i:03d}", "messages": [{"role": "user", "content": f"Question {i}: explain item {i * 7}."}]}
        for i in range(n)
    ]
    rows.insert(3, {"prompt_id": "bad-no-user", "messages": [{"role": "system", "content": "only a system turn"}]})
    rows.insert(7, {"prompt_id": "bad-role", "messages": [{"role": "robot", "content": "beep"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_regen(directory: Path, n: int, *, seed: int = 7, empty: bool = True) -> Path:
    """A complete regen-kind dataset (the columns dump-hidden reads): random ids over [16, VOCAB)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(directory, "regen", REGEN_SCHEMA, {"test": "reliability", "n": n, "seed": seed},
                     shard_rows=8) as w:
        for i in range(n):
            t = int(rng.integers(24, 97))
            ids = rng.integers(16, VOCAB, t).tolist()
            w.write({"id": f"c{i:04d}", "input_ids": ids, "loss_mask": [j >= 8 for j in range(t)]})
        if empty:
            w.write({"id": "c-empty", "input_ids": [], "loss_mask": []})
    return directory


def write_hidden(directory: Path, n: int, *, codec: str = "zstd-split", layer_ids: list[int] | None = None,
                 hidden_size: int = HIDDEN, target: str = "tiny:random", shard_bytes: int = 1 << 16) -> Path:
    """A complete hidden-state dataset of the trainer's synthetic samples (learnable, deterministic)."""
    from dspark_train.data import SyntheticHiddenSource

    layer_ids = layer_ids or LAYERS
    src = SyntheticHiddenSource(n, layer_ids=layer_ids, hidden_size=hidden_size, vocab_size=VOCAB, min_len=24,
                                max_len=64, seed=1)
    with HiddenStateWriter(directory, layer_ids=layer_ids, hidden_size=hidden_size, codec=codec, target=target,
                           seq_len=64, shard_bytes=shard_bytes) as w:
        for i in range(len(src)):
            s = src.get(i)
            w.write(s.id, s.input_ids, s.loss_mask, s.hidden)
    return directory


def write_vocab_manifest(vocab_file: Path) -> Path:
    """A `vocab.json` recording `vocab_file`'s sha256, for a hand-made vocab the trainer must get past its
    checksum check to reach the check a test is about."""
    import hashlib

    from schemas.store import VocabManifest

    manifest = VocabManifest(fingerprint={"test": "hand-made"}, fingerprint_hash="-", data_dir="-", data_kind="regen",
                             draft_vocab_size=1, target_vocab_size=1, samples=0, tokens=0, coverage=0.0,
                             sha256=hashlib.sha256(vocab_file.read_bytes()).hexdigest(), created_at="-")
    path = vocab_file.parent / "vocab.json"
    path.write_text(manifest.model_dump_json(indent=1))
    return path


def regen_sets(target: str, prompts: Path, endpoint: str) -> list[str]:
    """regen through the openai backend against one server; 4 prompts per commit group."""
    return [
        f"target.model={target}",
        f"prompts.source={prompts}",
        "prompts.num_prompts=null",
        "regen.shard_samples=4",
        "regen.sampling.max_new_tokens=16",
        "regen.backend=openai",
        f'regen.endpoints=["{endpoint}"]',
        "regen.concurrency=4",
        "regen.timeout_s=60",
    ]


def dump_sets(target: str) -> list[str]:
    """dump-hidden through the transformers backend; 4 samples per commit, 64 KiB shards (rollovers)."""
    return [
        f"target.model={target}",
        "capture.backend=hf",
        "capture.batch_size=4",
        "capture.shard_bytes=65536",
        "seq_len=256",
    ]


def train_sets(target: str) -> list[str]:
    """A tiny training run: 1 draft layer, full target vocab (no vocab file), a checkpoint every 2 steps."""
    return [
        f"target.model={target}",
        "seq_len=64",
        "model.num_layers=1",
        f"vocab.draft_vocab_size={VOCAB}",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_anchors=8",
        "train.val_fraction=0.1",
        "train.val_every=4",
        "train.save_every=2",
        "train.log_every=2",
        "train.num_workers=2",
    ]


def with_sets(command: str, sets: list[str], *rest: str) -> list[str]:
    """`dspark COMMAND --recipe tiny --set a --set b ... REST`."""
    return [command, "--recipe", "tiny", *[x for s in sets for x in ("--set", s)], *rest]
