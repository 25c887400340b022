"""One capture's settings, made once from the recipe and the target's shape, read by every producer.

Three commands capture hidden states and must agree to the byte: `dump-hidden` writes the store,
`serve-target` runs the same engine and announces what it captures on /v1/info, and `train --stream`
checks the servers against its recipe and tees what they send into a cache that carries dump-hidden's
fingerprint (so a dump can seed it and an offline run reads it as a dump). Each used to derive the layer
list, the engine options, the writer's arguments and the fingerprint by hand, and the copies drifted
(the stream's `producer_config` lacked the target). `CaptureSettings` is the one derivation:

    settings = CaptureSettings.for_target(recipe, info.num_hidden_layers, info.hidden_size)
    settings.plan                       # the layer plan (checked against the target)
    settings.engine_options()           # the engine's settings (revision, max_model_len, dtype, ...)
    kwargs = settings.writer_kwargs(regen_fingerprint)
    HiddenStateWriter(out, **kwargs)
    hidden_fingerprint(**kwargs)        # what that writer records, without opening one (store/hidden.py)
    settings.stream_fields()            # what a server must capture (`StreamInfo.capture_fields()`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspark_data.capture.backend import EngineOptions, engine_options
from dspark_data.capture.layers import LayerPlan, plan_layers
from schemas.recipe import Recipe
from schemas.stream import StreamInfo

# `serve-target` always captures with vLLM (whatever the recipe's capture.backend): the stream's fingerprint
# says so, and a `dump-hidden --backend vllm` of the same regen data can seed a stream cache.
STREAM_BACKEND = "vllm"


@dataclass(frozen=True)
class CaptureSettings:
    """The recipe's capture as planned against one target, for one backend."""

    recipe: Recipe
    plan: LayerPlan
    backend: str  # the engine that makes the states ('vllm' or 'hf'): part of the store fingerprint

    @classmethod
    def for_target(
        cls, recipe: Recipe, num_hidden_layers: int, hidden_size: int, backend: str | None = None
    ) -> CaptureSettings:
        """Plan the recipe's layers against the target's shape (bad ids: an error naming the recipe field);
        `backend` defaults to the recipe's `capture.backend`."""
        capture = recipe.capture
        plan = plan_layers(capture.aux_layers, capture.include_last_layer, num_hidden_layers, hidden_size)
        return cls(recipe, plan, backend or capture.backend)

    @property
    def layer_ids(self) -> list[int]:
        """Stored layer ids in stored order (aux layers, then N when stored)."""
        return list(self.plan.stored_ids)

    def engine_options(self, **overrides: Any) -> EngineOptions:
        """The capture engine's settings (`backend.engine_options`: refuses a max_model_len below seq_len)."""
        return engine_options(self.recipe, **overrides)

    def writer_kwargs(
        self,
        regen_fingerprint: str | None,
        *,
        extra_fingerprint: dict[str, Any] | None = None,
        producer: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`HiddenStateWriter`'s keyword arguments for data captured from the regen dataset whose manifest
        fingerprint is `regen_fingerprint`. `extra_fingerprint`: keys that also decide the content (a part's
        index); `producer`: informational entries for the manifest's `producer_config` (a part's assigned
        ids, the stream's endpoints)."""
        recipe, capture = self.recipe, self.recipe.capture
        return {
            "layer_ids": self.layer_ids,
            "hidden_size": self.plan.hidden_size,
            "codec": capture.codec,
            "target": recipe.target.model,
            "target_revision": recipe.target.revision,
            "seq_len": recipe.seq_len,
            "regen_fingerprint": regen_fingerprint,
            "zstd_level": capture.zstd_level,
            "extra_fingerprint": {"backend": self.backend, "engine_dtype": recipe.target.dtype,
                                  **(extra_fingerprint or {})},
            "producer_config": {"capture": capture.model_dump(mode="json"), "target": recipe.target.model_dump(),
                                **(producer or {})},
            "shard_bytes": capture.shard_bytes,
            "topk_logprobs": capture.topk_logprobs,
        }

    def stream_fields(self) -> dict[str, Any]:
        """What a stream server must capture for this recipe: `StreamInfo.capture_fields()` of its /v1/info."""
        recipe, capture = self.recipe, self.recipe.capture
        return {
            "target": recipe.target.model,
            "target_revision": recipe.target.revision,
            "seq_len": recipe.seq_len,
            "layer_ids": self.layer_ids,
            "hidden_size": self.plan.hidden_size,
            "codec": capture.codec,
            "zstd_level": capture.zstd_level,
            "topk_logprobs": capture.topk_logprobs,
        }

    def stream_info(
        self, *, server_id: str, max_tokens: int, vocab_size: int, max_inflight: int, max_queue: int
    ) -> StreamInfo:
        """What a gateway serving this capture announces on /v1/info."""
        return StreamInfo(
            server_id=server_id,
            recipe=self.recipe.name,
            max_tokens=max_tokens,
            vocab_size=vocab_size,
            max_inflight=max_inflight,
            max_queue=max_queue,
            **self.stream_fields(),
        )
