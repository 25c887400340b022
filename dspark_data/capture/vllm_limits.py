"""Model families whose vLLM 0.32 forward returns wrong or no hidden states for some layer ids.

Read from vLLM 0.32's source (the aux capture lives in each model's forward, not in one place):

- `model_executor/models/deepseek_v2.py` `DeepseekV2Model.forward` (DeepSeek-V2/V3, and GLM-5 / DeepSeek-V3.2
  on CPU and XPU): captures id k as `hidden_states + residual` *before* layer k, but `residual` is None
  before layer 0, so id 0 raises a TypeError inside the engine. Ids 1..N are right.
- `models/deepseek_v32/{nvidia,amd}/model.py` `DeepseekV32Model.forward` (GLM-5.x `glm_moe_dsa` and
  DeepSeek-V3.2 on CUDA/ROCm): the loop captures only ids < N (no end-layer capture), so id N never comes
  back and the extract_hidden_states proposer fails to stack the states. On CUDA the decoder layers also
  leave their MLP output un-reduced across tensor-parallel ranks (the all-reduce is fused into the next
  norm), so with tensor_parallel_size > 1 the captured `hidden_states + residual` is a per-rank partial
  sum, not the residual stream.

Failing here, before the engine starts, beats a crash mid-run or silently wrong training data.
"""

from __future__ import annotations

from collections.abc import Sequence

from dspark_data.capture.layers import CaptureConfigError, LayerPlan

# Architectures served by vLLM's DeepseekV2Model (on every platform).
DEEPSEEK_V2_MODEL = frozenset({"DeepseekV2ForCausalLM", "DeepseekForCausalLM", "DeepseekV3ForCausalLM"})
# DSA architectures: DeepseekV2Model on CPU/XPU, DeepseekV32Model on CUDA/ROCm.
DSA_MODELS = frozenset({"GlmMoeDsaForCausalLM", "DeepseekV32ForCausalLM"})


def check_vllm_support(architectures: Sequence[str], plan: LayerPlan, tensor_parallel_size: int, platform: str) -> None:
    """Raise CaptureConfigError when vLLM 0.32 cannot capture `plan` for this architecture and platform.

    `platform` is "cuda", "rocm", "cpu" or "xpu" (vLLM's `current_platform`).
    """
    archs = set(architectures)
    gpu_dsa = bool(archs & DSA_MODELS) and platform in ("cuda", "rocm")
    v2_model = bool(archs & DEEPSEEK_V2_MODEL) or (bool(archs & DSA_MODELS) and not gpu_dsa)
    name = "/".join(sorted(archs)) or "this model"
    if (v2_model or gpu_dsa) and 0 in plan.engine_ids:
        raise CaptureConfigError(
            f"vLLM 0.32 cannot capture layer id 0 of {name} (its forward adds a residual that is None before "
            "layer 0); use ids >= 1 or --backend hf"
        )
    if gpu_dsa and plan.last_id in plan.engine_ids:
        raise CaptureConfigError(
            f"vLLM 0.32's {platform} DSA model ({name}) never returns layer id {plan.last_id} (the last layer's "
            "output); set capture.include_last_layer=false or use --backend hf"
        )
    if gpu_dsa and platform == "cuda" and tensor_parallel_size > 1:
        raise CaptureConfigError(
            f"vLLM 0.32's CUDA DSA model ({name}) captures per-rank partial sums when "
            f"tensor_parallel_size={tensor_parallel_size} > 1 (layer outputs are reduced lazily); "
            "capture with tensor_parallel_size=1 or --backend hf"
        )
