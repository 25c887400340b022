"""The recipe: one typed config tree for every stage (regen, capture, vocab, model, train, eval, export).

Precedence is command-line flag > recipe file > the defaults below. Every field carries a
description; `dspark config show` prints the resolved tree. Unknown keys are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel

RECIPE_SCHEMA_VERSION = 1



# The codec names of dspark_data/store/codecs.py's registry (tests/test_groupq.py checks they agree).
HiddenCodec = Literal[
    "raw", "zstd-split", "fp8", "int6-g32", "int5-g32", "int4-g32", "int4-g64", "int3-g32",
    "int6-g32-delta", "int5-g32-delta", "int4-g32-delta",
]
# Float dtypes a recipe or flag may name (target compute, export); dspark_train/dtypes.py maps them to torch.
FloatDtype = Literal["bfloat16", "float16", "float32"]

class TargetConfig(StrictModel):
    model: str = Field(
        "tiny:trained",
        description="Target model: a hub id, a local directory, or 'tiny:trained' / 'tiny:random' "
        "for the embedded tiny target built and cached locally.",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (commit, branch or tag) of the target; every stage loads it (regen, capture, "
        "serve-target, the trainer's head, eval) and export records it as verifier.revision.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM tensor parallel size for the target. CUDA/ROCm DSA models (GLM-5.x) capture per-rank "
        "partial sums above 1: spread them with data_parallel_size + enable_expert_parallel instead.",
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM data parallel size (engine replicas, one attention copy each; vllm serve only: "
        "the in-process engine of dump-hidden and regen runs one replica).",
    )
    enable_expert_parallel: bool = Field(
        False, description="vLLM expert parallel: MoE experts spread over tensor x data parallel ranks."
    )
    dtype: FloatDtype = Field("bfloat16", description="Target compute dtype.")
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="vLLM context (default: seq_len): regen's engine; capture and serve-target (must be >= "
        "seq_len); the vLLM eval engine's prompt budget (plus max_new_tokens).",
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory fraction.")


class PromptsConfig(StrictModel):
    source: str = Field(
        "embedded",
        description="'embedded' (built-in prompt set), a Hugging Face dataset id, or a local "
        ".jsonl/.json/.parquet file in UltraChat or ShareGPT shape.",
    )
    split: str = Field("train_sft", description="Dataset split for hub sources.")
    num_prompts: int | None = Field(None, ge=1, description="How many prompts to regenerate (None: all).")
    selection: Literal["first", "random"] = Field(
        "first", description="Take the first N prompts, or N sampled with the run seed."
    )
    turns: Literal["first", "all"] = Field(
        "first", description="Re-answer only the first user turn, or every user turn in order."
    )
    max_prompt_tokens: int = Field(2048, ge=1, description="Prompts longer than this are rejected with a reason.")
    id_column: str | None = Field("prompt_id", description="Column holding a stable sample id (else content hash).")
    messages_column: str = Field("messages", description="Column holding the conversation.")


class SamplingConfig(StrictModel):
    temperature: float | None = Field(
        None, ge=0, description="Sampling temperature; None uses the target's generation_config default."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; None: target default.")
    top_k: int | None = Field(None, description="Top-k; None: target default (-1 disables).")
    max_new_tokens: int = Field(1024, ge=1, description="Maximum generated tokens per assistant turn.")


class RegenConfig(StrictModel):
    backend: Literal["vllm", "openai"] = Field("vllm", description="In-process vLLM engine or HTTP servers.")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible base URLs (openai backend).")
    concurrency: int = Field(64, ge=1, description="In-flight requests per endpoint (openai backend).")
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout (openai backend).")
    max_retries: int = Field(5, ge=0, description="Retries on connection errors, 5xx and 429.")
    shard_samples: int = Field(1000, ge=1, description="Samples per regen shard (also the commit granularity).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class CaptureConfig(StrictModel):
    backend: Literal["vllm", "hf"] = Field("vllm", description="vLLM with dspark's KV connector, or transformers.")
    aux_layers: list[int] = Field(
        description="Aux layer ids in vLLM's convention (id k = residual stream entering decoder layer k)."
    )
    include_last_layer: bool = Field(
        True, description="Also store layer id N (last layer output before final norm) for the loss targets."
    )
    topk_logprobs: int = Field(
        0,
        ge=0,
        le=4096,
        description="Also store the target's top-K next-token log-probabilities per position (0: off). The "
        "trainer takes its targets from them when include_last_layer is false (docs/training.md, top-K targets).",
    )
    codec: HiddenCodec = Field("zstd-split", description="Hidden-state codec (docs/formats/store.md).")
    zstd_level: int = Field(1, ge=1, le=22, description="zstd level for the compressed codecs.")
    shard_bytes: int = Field(1 << 30, ge=1 << 16, description="Roll over to a new shard past this size.")
    batch_size: int = Field(64, ge=1, description="Conversations per capture batch.")

    @field_validator("aux_layers")
    @classmethod
    def _layers_sorted_unique(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("aux_layers must list at least one layer id")
        if any(i < 0 for i in v) or sorted(set(v)) != v:
            raise ValueError(f"aux_layers must be non-negative, unique and ascending, got {v}")
        return v


class VocabConfig(StrictModel):
    draft_vocab_size: int = Field(32000, ge=2, description="Draft vocabulary size (top-N loss-masked tokens).")


class ModelConfig(StrictModel):
    num_layers: int = Field(5, ge=1, description="Draft decoder layers.")
    block_size: int = Field(8, ge=2, description="Tokens per draft block: the anchor plus block_size-1 masks.")
    hidden_size: int | None = Field(None, description="Draft hidden size (None: the target's).")
    intermediate_size: int | None = Field(None, description="Draft MLP size (None: the target's).")
    num_attention_heads: int | None = Field(None, description="None: the target's.")
    num_key_value_heads: int | None = Field(None, description="None: the target's.")
    head_dim: int | None = Field(None, description="None: the target's (or hidden/heads).")
    activation: Literal["silu", "gelu"] = Field("silu", description="MLP activation.")
    markov_rank: int = Field(256, ge=0, description="Rank of the Markov logit-bias head (0 disables it).")
    enable_confidence_head: bool = Field(True, description="Per-position acceptance predictor.")
    confidence_head_with_markov: bool = Field(True, description="Feed the Markov embedding to the confidence head.")
    sample_from_anchor: bool = Field(
        False,
        description="True: the anchor slot also predicts (block_size drafts); False (vLLM default): "
        "the anchor is the bonus token and block_size-1 mask slots predict.",
    )
    mask_token_id: int | None = Field(None, description="Mask token id (None: the tokenizer's mask token).")


class LossConfig(StrictModel):
    weights: dict[Literal["ce", "tv", "kl"], float] = Field(
        default_factory=lambda: {"ce": 0.1, "tv": 0.9}, description="Weighted mix of per-token losses."
    )
    confidence_weight: float = Field(1.0, ge=0, description="Weight of the confidence-head BCE.")
    gamma: float = Field(4.0, gt=0, description="Position weights exp(-(k-1)/gamma).")


class TrainConfig(StrictModel):
    epochs: int = Field(3, ge=1)
    lr: float = Field(6e-4, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine")
    warmup_ratio: float = Field(0.02, ge=0, lt=1, description="Fraction of steps of linear warmup.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.95))
    grad_clip: float = Field(1.0, ge=0, description="Max grad norm (0 disables).")
    batch_size: int = Field(1, ge=1, description="Documents per micro-batch per rank.")
    grad_accum: int = Field(1, ge=1)
    max_anchors: int = Field(1024, ge=1, description="Anchors sampled per document per epoch.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    val_fraction: float = Field(0.02, ge=0, lt=1, description="Held-out fraction (by sample id hash).")
    val_every: int = Field(500, ge=1, description="Validate every N steps (and at the end).")
    save_every: int = Field(500, ge=1, description="Checkpoint every N steps (and at the end).")
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(2, ge=0, description="Background decode threads.")
    prefetch: int = Field(4, ge=1, description="Batches decoded ahead.")
    fsdp: bool = Field(False, description="FSDP2 instead of DDP.")
    autocast: Literal["auto", "bf16", "none"] = Field("auto", description="auto: bf16 on GPU, none on CPU.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers fed alongside metrics.jsonl (each an optional extra: "
        "pip install 'dspark[tensorboard]' / 'dspark[wandb]'); a missing one is named and skipped.",
    )
    preempt_grace_s: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM: finish the step, checkpoint and exit within this many seconds, else exit "
        "anyway (the last complete checkpoint stays). Keep it under the scheduler's SIGTERM-to-SIGKILL wait "
        "(SLURM KillWait, Kubernetes terminationGracePeriodSeconds, torchrun's 30 s). 0: no deadline.",
    )


class EvalConfig(StrictModel):
    num_speculative_tokens: int = Field(7, ge=1, description="Draft tokens per step in vLLM and eval.")
    prompt_sets: list[str] = Field(default_factory=lambda: ["code", "math"], description="Built-in sets or paths.")
    max_new_tokens: int = Field(256, ge=1)
    num_prompts: int | None = Field(None, ge=1, description="Limit prompts per set.")
    backend: Literal["hf", "vllm"] = Field("hf", description="Target backend for offline evaluation.")


class Recipe(StrictModel):
    schema_version: int = Field(RECIPE_SCHEMA_VERSION, description="Recipe schema version.")
    name: str = Field(description="Recipe name; also the default run directory under runs/.")
    description: str = Field("", description="What this recipe is for.")
    seed: int = Field(0, description="Run seed; every other seed derives from it.")
    seq_len: int = Field(4096, ge=16, description="Maximum tokens per conversation (regen, capture, train).")
    target: TargetConfig = Field(default_factory=TargetConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    regen: RegenConfig = Field(default_factory=RegenConfig)
    capture: CaptureConfig
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        drafts = self.model.block_size - (0 if self.model.sample_from_anchor else 1)
        if self.eval.num_speculative_tokens > drafts:
            raise ValueError(
                f"eval.num_speculative_tokens={self.eval.num_speculative_tokens} exceeds the "
                f"{drafts} tokens a block of model.block_size={self.model.block_size} drafts"
            )
        return self
