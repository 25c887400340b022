"""What every capture backend returns and the engine settings it takes (`backend_factory.py` picks one).

A backend turns token-id sequences into per-sample hidden states `[T, L, H]` in stored layer order
(`LayerPlan.stored_ids`), in the engine's dtype (bf16 for real runs; float32 makes parity tests exact),
together with the token ids the engine actually processed, so the caller can check them.

Backends stream: `capture_iter` takes (key, token ids) pairs and yields (key, Captured) as samples
finish, in any order. The vLLM backend keeps a bounded number of requests in flight so the engine never
waits for the writer and memory stays bounded; the transformers backend yields batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from dspark_data.capture.layers import CaptureConfigError, LayerPlan
from dspark_data.store.topk import TopK
from schemas.recipe import CaptureConfig, TargetConfig

if TYPE_CHECKING:
    from schemas.recipe import Recipe


@dataclass(frozen=True)
class Captured:
    """One sample's capture: the ids the engine saw and its states in stored order."""

    token_ids: torch.Tensor  # (T,) int64
    hidden: torch.Tensor  # (T, L, H)
    topk: TopK | None = None  # the target's top-K next-token log-probs, when EngineOptions.topk_logprobs > 0


class CaptureBackend(Protocol):
    """A loaded target that captures hidden states; `close()` releases the engine."""

    plan: LayerPlan

    def capture_iter(self, items: Iterable[tuple[str, Sequence[int]]]) -> Iterator[tuple[str, Captured]]: ...

    def close(self) -> None: ...


def capture_all(backend: CaptureBackend, seqs: Sequence[Sequence[int]]) -> list[Captured]:
    """Capture a list of sequences and return the results in input order (tests, small jobs)."""
    got = dict(backend.capture_iter((str(i), seq) for i, seq in enumerate(seqs)))
    return [got[str(i)] for i in range(len(seqs))]


_TARGET = TargetConfig()  # the recipe's defaults, for options built by hand (tests)


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings taken from the recipe's `target` section (kept flat so tests can build one); a field
    left out takes the recipe's default."""

    dtype: str = _TARGET.dtype
    revision: str | None = None  # hub revision of the target (recipe target.revision); None: the default branch
    max_model_len: int = 4096
    tensor_parallel_size: int = _TARGET.tensor_parallel_size
    data_parallel_size: int = _TARGET.data_parallel_size  # > 1: vllm serve only (vLLM's in-process LLM refuses it)
    enable_expert_parallel: bool = _TARGET.enable_expert_parallel
    gpu_memory_utilization: float = _TARGET.gpu_memory_utilization
    enforce_eager: bool | None = None  # None: eager on CPU (compiling costs minutes), compiled elsewhere
    batch_size: int = CaptureConfig.default_of("batch_size")  # requests in flight (vllm; hf: one per forward)
    in_flight_bytes: int = 4 << 30  # cap on captured-but-unread states (spool + host memory), vllm only
    topk_logprobs: int = CaptureConfig.default_of("topk_logprobs")  # also the target's top-K log-probs (0: off)


def engine_options(recipe: Recipe, **overrides: Any) -> EngineOptions:
    """The capture engine's settings from the recipe's `target` section; dump-hidden and serve-target share
    it, so both load the same revision with the same context length.

    `target.max_model_len` (None: seq_len) is the longest conversation the engine takes; conversations are cut
    at seq_len, so a value below seq_len would reject the longest ones mid-run: refused up front instead.
    """
    t = recipe.target
    if t.max_model_len is not None and t.max_model_len < recipe.seq_len:
        raise CaptureConfigError(
            f"target.max_model_len={t.max_model_len} is below seq_len={recipe.seq_len}: capture feeds conversations "
            "of up to seq_len tokens; raise target.max_model_len or lower seq_len"
        )
    fields: dict[str, Any] = {
        "dtype": t.dtype,
        "revision": t.revision,
        "max_model_len": t.max_model_len or recipe.seq_len,
        "tensor_parallel_size": t.tensor_parallel_size,
        "data_parallel_size": t.data_parallel_size,
        "enable_expert_parallel": t.enable_expert_parallel,
        "gpu_memory_utilization": t.gpu_memory_utilization,
        "batch_size": recipe.capture.batch_size,
        "topk_logprobs": recipe.capture.topk_logprobs,
    }
    return EngineOptions(**{**fields, **overrides})

