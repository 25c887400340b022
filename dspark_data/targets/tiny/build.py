"""The embedded tiny targets: named specs (`tiny:random`, `tiny:trained`, `tiny:mla`, `tiny:glm5`) and
their cached builds.

No model hub is reachable here, so every pipeline test and the embedded demo run against a target built
locally in seconds (random) or a few minutes (trained). Each build is keyed by its full spec (see
`dspark_data.targets.tiny.build_cache`), so two machines with the same code and Python build the same bytes, and a
change to any size, seed or recipe gets a fresh directory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from dspark_data.targets.tiny.architectures import ARCH_PRESETS, init_model, make_config, save_target
from dspark_data.targets.tiny.build_cache import cached_build, read_build_record
from dspark_data.targets.tiny.stdlib_corpus import python_tag
from dspark_data.targets.tiny.tokenizer import TOKENIZER_DEFAULTS, save_tokenizer, train_tokenizer

# Bump when a builder changes in a way that changes its output: every cache key changes with it.
BUILD_VERSION = 2

# The target's default sampling (generation_config.json): what "the target's default sampling" means.
DEFAULT_SAMPLING = {"temperature": 0.8, "top_p": 0.95}

# Training recipe of tiny:trained (see dspark_data.targets.tiny.pretrain); sized for ~3-4 minutes on 2 cores.
TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 1234,
    "steps": 240,
    "batch_size": 16,
    "seq_len": 256,
    "lr": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 20,
    "weight_decay": 0.1,
    "chat_fraction": 0.9,  # share of training sequences that are chat-formatted conversations
    "num_conversations": 5000,
    "corpus_bytes": 2_500_000,
    "threads": 1,  # float reductions depend on the thread count: one thread gives the same bits anywhere
}

TINY_TARGETS: dict[str, dict[str, Any]] = {
    "random": {"arch": "llama", "init": "random"},
    "trained": {"arch": "llama", "init": "trained"},
    "mla": {"arch": "mla", "init": "random"},
    "glm5": {"arch": "glm5", "init": "random"},
}


def tokenizer_spec() -> dict[str, Any]:
    return {"version": BUILD_VERSION, "python": python_tag(), **TOKENIZER_DEFAULTS}


def tiny_spec(flavour: str) -> dict[str, Any]:
    """The full build spec of `tiny:<flavour>`: what its cache key is computed from."""
    if flavour not in TINY_TARGETS:
        raise ValueError(f"unknown tiny target 'tiny:{flavour}'; available: {', '.join(tiny_names())}")
    entry = TINY_TARGETS[flavour]
    spec: dict[str, Any] = {
        "version": BUILD_VERSION,
        "flavour": flavour,
        "arch": entry["arch"],
        "model": ARCH_PRESETS[entry["arch"]],
        "init_seed": 0,
        "tokenizer": tokenizer_spec(),
        "sampling": DEFAULT_SAMPLING,
    }
    if entry["init"] == "trained":
        spec["train"] = TRAIN_DEFAULTS
    return spec


def tiny_names() -> list[str]:
    return [f"tiny:{name}" for name in TINY_TARGETS]


def build_tokenizer_dir() -> Path:
    """The cached tokenizer directory shared by every tiny target."""

    def build(tmp: Path) -> dict[str, Any]:
        p = TOKENIZER_DEFAULTS
        tok = train_tokenizer(p["vocab_size"], p["corpus_bytes"], p["min_frequency"])
        save_tokenizer(tok, tmp, model_max_length=ARCH_PRESETS["llama"]["max_position_embeddings"])
        return {"vocab_size": tok.get_vocab_size()}

    return cached_build("tokenizer", tokenizer_spec(), build)


def build_tiny(flavour: str) -> Path:
    """Build (once) and return the local directory of `tiny:<flavour>`."""
    spec = tiny_spec(flavour)

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoTokenizer

        tok_dir = build_tokenizer_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        config = make_config(spec["arch"], spec["model"], tokenizer)
        model = init_model(config, spec["init_seed"])
        facts: dict[str, Any] = {}
        if "train" in spec:
            from dspark_data.targets.tiny.pretrain import train_tiny

            start = time.monotonic()
            facts["train"] = train_tiny(model, tokenizer, spec["train"])
            facts["train"]["seconds"] = round(time.monotonic() - start, 1)
        save_target(model, tokenizer, tok_dir, tmp, spec["sampling"])
        shutil.copy(tok_dir / "build.json", tmp / "tokenizer_build.json")
        return facts

    return cached_build(f"tiny-{flavour}", spec, build)


def tiny_build_record(flavour: str) -> dict[str, Any] | None:
    """The `build.json` of a built tiny target (spec, build time, loss curve), or None if not built."""
    from dspark_data.targets.tiny.build_cache import entry_dir

    return read_build_record(entry_dir(f"tiny-{flavour}", tiny_spec(flavour)))
