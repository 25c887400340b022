"""The in-process vLLM engine backend (`--backend vllm`).

Why not call `LLM.chat(all prompts)` directly: it returns only when every prompt is done, so nothing
could be committed (and a kill would lose everything) until the end, and multi-turn conversations
would wait for the slowest conversation of the batch at each turn. `LLM.chat` is `enqueue_chat` + a
loop over `llm_engine.step()`; this backend runs the same two pieces itself, so it batches exactly like
`LLM.chat` (all queued requests are scheduled together) while handing out each request as it
finishes. The engine must be started in a `__main__`-guarded script (vLLM spawns processes). An engine
this backend owns is shut down on close, and a reaper process kills it if this process is SIGKILLed
(started with it by `dspark_data.engine.llm.start_llm`).
"""

from __future__ import annotations

import logging
from typing import Any

from dspark_data.engine.llm import StartedLLM, start_llm
from dspark_data.regen.conversation import TurnFailure, TurnRequest, TurnResult
from schemas.recipe import Recipe, TargetConfig

_TARGET = TargetConfig()  # the recipe's defaults, for an engine started without a recipe (tests, bench)

log = logging.getLogger(__name__)


def engine_kwargs(
    target_path: str,
    *,
    revision: str | None = None,
    dtype: str = _TARGET.dtype,
    tensor_parallel_size: int = _TARGET.tensor_parallel_size,
    enable_expert_parallel: bool = _TARGET.enable_expert_parallel,
    max_model_len: int | None = _TARGET.max_model_len,
    gpu_memory_utilization: float = _TARGET.gpu_memory_utilization,
    seed: int = Recipe.default_of("seed"),
    enforce_eager: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The `vllm.LLM` keyword arguments of regen's engine; `kwargs_to_flags` of them serves the same engine for
    the openai backend. `enforce_eager=None`: eager on CPU, vLLM's default elsewhere. Every regen request is
    seeded, so on CPU chunked prefill is off (`unchunked_prefill_kwargs`); the memory share is passed on GPUs
    only."""
    from dspark_data.engine.cpu import default_eager, unchunked_prefill_kwargs, vllm_platform
    from dspark_data.engine.llm import target_kwargs

    cpu = vllm_platform() == "cpu"
    kwargs: dict[str, Any] = dict(
        **target_kwargs(target_path, revision),
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        enable_expert_parallel=enable_expert_parallel,
        max_model_len=max_model_len,
        seed=seed,
        enforce_eager=default_eager(enforce_eager),
        **unchunked_prefill_kwargs(max_model_len),
    )
    if not cpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    kwargs.update(extra)
    return kwargs


def start_engine(
    target_path: str, *, data_parallel_size: int = _TARGET.data_parallel_size, **options: Any
) -> StartedLLM:
    """Start regen's `vllm.LLM` on the target (`options`: `engine_kwargs`), with the CPU defaults and a reaper
    (`engine.llm.start_llm`); `.llm` is the engine, `.shutdown()` stops it. Data parallel is refused up front."""
    from dspark_data.capture.vllm_limits import check_in_process_layout

    check_in_process_layout(data_parallel_size, what="regen.backend=vllm")
    kwargs = engine_kwargs(target_path, **options)
    return start_llm(kwargs, ranks=kwargs["tensor_parallel_size"])


def _external_id(internal_id: str) -> str:
    """The id finished outputs carry: vLLM appends "-<8 random chars>" to the LLM's counter id on add
    (`InputProcessor.assign_request_id`); the counter id itself never contains "-"."""
    return internal_id.split("-", 1)[0]


class VllmEngineBackend:
    """Queue requests into a `vllm.LLM` and step it, returning requests as they finish."""

    def __init__(self, llm: Any, started: StartedLLM | None = None):
        """`started`: given when this backend owns the engine (`start_engine` returned it, `llm` is its
        `.llm`); closing the backend then shuts the engine down."""
        from vllm import SamplingParams

        self.llm, self.owns_engine = llm, started is not None
        self._started = started
        self._SamplingParams = SamplingParams
        self._pending: dict[str, tuple[str, TurnRequest]] = {}  # external id -> (internal id, request)
        self._failed: list[TurnFailure] = []

    def _params(self, req: TurnRequest) -> Any:
        return self._SamplingParams(**req.params)

    def submit(self, requests: list[TurnRequest]) -> None:
        if not requests:
            return
        try:
            ids = self.llm.enqueue_chat(
                [r.messages for r in requests], [self._params(r) for r in requests], use_tqdm=False
            )
        except Exception:  # noqa: BLE001 - one bad conversation must not sink the batch: retry one by one
            ids = None
        if ids is not None:
            for rid, req in zip(ids, requests, strict=True):
                self._pending[_external_id(rid)] = (rid, req)
            return
        for req in requests:
            try:
                (rid,) = self.llm.enqueue_chat([req.messages], [self._params(req)], use_tqdm=False)
            except Exception as exc:  # noqa: BLE001 - e.g. the chat template raising on this conversation
                self._failed.append(
                    TurnFailure(req.sample_id, req.turn, "render_failed", f"{type(exc).__name__}: {exc}")
                )
                continue
            self._pending[_external_id(rid)] = (rid, req)

    def poll(self) -> list[TurnResult | TurnFailure]:
        out: list[TurnResult | TurnFailure] = list(self._failed)
        self._failed.clear()
        engine = self.llm.llm_engine
        while not out and self._pending and engine.has_unfinished_requests():
            for output in engine.step():
                if not output.finished:
                    continue
                entry = self._pending.pop(output.request_id, None)
                if entry is None:
                    log.warning("engine returned unknown request id %s", output.request_id)
                    continue
                req = entry[1]
                completion = output.outputs[0]
                out.append(
                    TurnResult(
                        req.sample_id,
                        req.turn,
                        list(output.prompt_token_ids or []),
                        list(completion.token_ids),
                        str(completion.finish_reason),
                    )
                )
        if not out and self._pending and not engine.has_unfinished_requests():
            for _, req in self._pending.values():  # the engine dropped them (should not happen): report, never hang
                out.append(TurnFailure(req.sample_id, req.turn, "engine_lost_request", "engine has no such request"))
            self._pending.clear()
        return out

    def close(self) -> None:
        """Drop pending requests; shut the engine down if this backend started it (frees its memory now)."""
        if self._pending:
            self.llm.llm_engine.abort_request([rid for rid, _ in self._pending.values()], internal=True)
            self._pending.clear()
        if self._started is not None:
            started, self._started = self._started, None
            try:
                started.shutdown()
            except Exception as exc:  # noqa: BLE001 - best effort at exit; the reaper (fired) finishes the job
                log.warning("vLLM engine shutdown: %s", exc)
