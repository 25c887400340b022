"""The vLLM capture backend: the target under vLLM, states copied out by dspark's KV connector.

Engine settings and why:
- `speculative_config`: method `extract_hidden_states`, `num_speculative_tokens` 1 (the only value the
  proposer accepts), `draft_model_config.hf_config.eagle_aux_hidden_state_layer_ids` = our stored ids
  (vLLM convention, passed unchanged; vLLM sorts and deduplicates them).
- `kv_transfer_config`: our connector (`dspark_data.capture.connector`), `kv_producer`, spool dir in
  `kv_connector_extra_config`.
- `enable_prefix_caching=False`: a cached prefix is not recomputed, so its slots would hold another
  request's states (or none) and the capture would come back short.
- Each sample is a token-id prompt generating one token: the prefill computes all T positions, and the
  one sampled token is never fed back, so exactly the T prompt positions are captured.

Scripts that create this backend must run under `if __name__ == "__main__":` (vLLM spawns processes).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dspark_data.capture.backend import Captured, EngineOptions
from dspark_data.capture.layers import LayerMismatch, LayerPlan, check_hidden_size
from dspark_data.capture.logprobs import from_vllm_prompt_logprobs
from dspark_data.capture.spool import SpoolError, make_spool_dir, take_record
from dspark_data.capture.vllm_limits import check_in_process_layout, check_vllm_support
from dspark_data.engine.cpu import default_eager, native_ops_kwargs, vllm_platform
from dspark_data.engine.llm import start_llm, target_kwargs
from dspark_data.targets import load_target_info

CONNECTOR_MODULE = "dspark_data.capture.connector"
CONNECTOR_CLASS = "DsparkHiddenStatesConnector"
SPOOL_TIMEOUT_S = 300.0


def engine_kwargs(model_path: str, plan: LayerPlan, options: EngineOptions, spool_dir: Path) -> dict[str, Any]:
    """The `vllm.LLM` keyword arguments for a capture engine (separate so tests and docs can show them)."""
    eager = default_eager(options.enforce_eager)
    return {
        **target_kwargs(model_path, options.revision),
        "dtype": options.dtype,
        # one sampled token plus the speculative slot beyond the longest prompt
        "max_model_len": options.max_model_len + 2,
        "tensor_parallel_size": options.tensor_parallel_size,
        "data_parallel_size": options.data_parallel_size,
        "enable_expert_parallel": options.enable_expert_parallel,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": eager,
        "enable_prefix_caching": False,
        "speculative_config": {
            "method": "extract_hidden_states",
            "num_speculative_tokens": 1,
            "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": list(plan.engine_ids)}},
        },
        "kv_transfer_config": {
            "kv_connector": CONNECTOR_CLASS,
            "kv_connector_module_path": CONNECTOR_MODULE,
            "kv_role": "kv_producer",
            "kv_connector_extra_config": {"spool_dir": str(spool_dir)},
        },
        **({"max_logprobs": options.topk_logprobs} if options.topk_logprobs else {}),  # vLLM's default cap is 20
        **native_ops_kwargs(eager),  # the states are kept: accurate CPU ops
    }


class VllmCapture:
    """A vLLM engine whose every request hands its hidden states to us through the spool."""

    def __init__(self, model_path: str, plan: LayerPlan, options: EngineOptions, spool_root: Path | None = None):
        from vllm import SamplingParams

        self.plan = plan
        archs = load_target_info(model_path, options.revision).architectures
        check_vllm_support(archs, plan, options.tensor_parallel_size, vllm_platform())
        check_in_process_layout(options.data_parallel_size)
        self.spool_dir = make_spool_dir(spool_root)
        self.topk = options.topk_logprobs
        # prompt_logprobs: the target's top-K at every prompt position (capture/logprobs.py), flat: no dicts
        topk_args = {"prompt_logprobs": self.topk, "flat_logprobs": True} if self.topk else {}
        self._sampling = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, **topk_args)
        self._ids = itertools.count()
        self.max_requests = options.batch_size
        engine_bytes = plan.bytes_per_token(getattr(torch, options.dtype).itemsize)
        self.max_tokens = max(1, options.in_flight_bytes // engine_bytes)
        ranks = options.tensor_parallel_size * options.data_parallel_size
        try:  # the CPU defaults and a reaper: a SIGKILLed dump-hidden must not leave the engine running
            self._started = start_llm(engine_kwargs(model_path, plan, options, self.spool_dir), ranks=ranks)
        except BaseException:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            raise
        self.llm = self._started.llm
        model_config = self.llm.llm_engine.model_config
        check_hidden_size(plan, int(model_config.get_hidden_size()), f"vLLM's model config of {model_path}")
        layers = int(model_config.get_total_num_hidden_layers())
        if layers != plan.num_hidden_layers:
            raise ValueError(
                f"vLLM loaded {layers} layers from {model_path}; the plan expects {plan.num_hidden_layers}"
            )

    def capture_iter(self, items: Iterable[tuple[str, Sequence[int]]]) -> Iterator[tuple[str, Captured]]:
        """Stream requests through the engine and yield captures as they finish (completion order).

        At most `batch_size` requests and `in_flight_bytes` of states are in flight, so the engine always
        has queued work while we write, and the spool never holds more than that budget.
        """
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        pending = iter(items)
        in_flight: dict[str, tuple[str, int]] = {}  # request id -> (key, tokens)
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(in_flight) < self.max_requests:
                tokens_in_flight = sum(n for _, n in in_flight.values())
                if in_flight and tokens_in_flight >= self.max_tokens:
                    return
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                    return
                key, seq = nxt
                request_id = f"dspark-{next(self._ids)}"
                engine.add_request(request_id, TokensPrompt(prompt_token_ids=[int(t) for t in seq]), self._sampling)
                in_flight[request_id] = (key, len(seq))

        refill()
        while in_flight:
            for out in engine.step():
                if not out.finished:
                    continue
                key, _ = in_flight.pop(out.request_id)
                yield key, self._collect(out)
            refill()

    def _collect(self, out: Any) -> Captured:
        """Read (and delete) a finished request's spool file; permute layers to stored order."""
        params = out.kv_transfer_params or {}
        if "hidden_states_path" not in params:
            raise SpoolError(f"request {out.request_id} came back without a capture; is the connector loaded?")
        record = take_record(Path(params["hidden_states_path"]), timeout_s=SPOOL_TIMEOUT_S)
        try:
            hidden = self.plan.to_stored(record.hidden, record.layer_ids)
        except LayerMismatch as exc:
            raise SpoolError(str(exc)) from None
        topk = None
        if self.topk:
            topk = from_vllm_prompt_logprobs(out.prompt_logprobs, int(record.token_ids.numel()), self.topk)
        return Captured(token_ids=record.token_ids, hidden=hidden, topk=topk)

    def close(self) -> None:
        """Stop the engine processes and remove the spool."""
        if getattr(self, "llm", None) is not None:
            self._started.shutdown()  # if the engine does not stop cleanly, the reaper kills it and this raises
            del self.llm
        shutil.rmtree(self.spool_dir, ignore_errors=True)
