"""The `config.json` of an exported draft: the speculators format, as vLLM 0.32 parses it.

vLLM recognises a speculators checkpoint by the `speculators_config` key
(`vllm/transformers_utils/config.py: maybe_override_with_speculators`), then
`SpeculatorsConfig.extract_transformers_pre_trained_config` starts from `transformer_layer_config` and
applies the per-algorithm updater (`configs/speculators/algos.py`):

- `update_dspark` keeps `architectures` entries it knows (`Qwen3DSparkModel`) else uses that one; copies
  `draft_vocab_size`, `target_hidden_size`, `mask_token_id`, `markov_rank`, `markov_head_type`,
  `block_size`, `enable_confidence_head`, `confidence_head_with_markov` when present; requires
  `aux_hidden_state_layer_ids` (stored as `eagle_aux_hidden_state_layer_ids`, and as
  `target_layer_ids = [i - 1 ...]`); `sample_from_anchor` defaults to False.
- `update_dflash` sets `architectures = ["DFlashDraftModel"]`, requires `aux_hidden_state_layer_ids` and
  `mask_token_id`, and makes every draft layer causal unless `sliding_window_non_causal` is true (its
  default when absent); our blocks attend bidirectionally, so we write it true.

`speculators_config.proposal_methods[0].speculative_tokens` becomes vLLM's `num_speculative_tokens` when
the directory is served directly (`vllm serve DIR`), and `verifier.name_or_path` becomes the served
target, so it must resolve: a hub id, or an absolute local directory.
The same file is what the `speculators` library's `DSparkSpeculatorConfig` / `DFlashSpeculatorConfig`
(pydantic) validate; field names and meanings match theirs.
"""

from __future__ import annotations

from typing import Any, Literal

from dspark_train.model.config import DraftConfig

ExportFormat = Literal["dspark", "dflash"]

# vLLM model class for each format (vllm/model_executor/models/registry.py).
ARCHITECTURES = {"dspark": ["Qwen3DSparkModel"], "dflash": ["DFlashDraftModel"]}


def proposal_method(num_speculative_tokens: int) -> dict[str, Any]:
    """speculators' GreedyTokenProposalConfig: exact-match verification of a chain of K tokens."""
    return {
        "proposal_type": "greedy",
        "speculative_tokens": int(num_speculative_tokens),
        "verifier_accept_k": 1,
        "accept_tolerance": 0.0,
    }


def build_config(
    cfg: DraftConfig,
    *,
    fmt: ExportFormat,
    aux_layer_ids: list[int],
    num_speculative_tokens: int,
    verifier_name_or_path: str,
    verifier_architectures: list[str],
    dtype: str,
    verifier_revision: str | None = None,
) -> dict[str, Any]:
    """The full config.json for `fmt`; `aux_layer_ids` in vLLM's convention (id k = input of layer k).

    `verifier_revision` (the run's `target.revision`) is written as `verifier.revision` when set: the draft is
    only valid for the weights it was trained against. vLLM reads `name_or_path` only; serve with
    `--revision` set to it (docs/export.md), and `dspark eval` loads that revision.
    """
    if len(aux_layer_ids) != cfg.num_aux_layers:
        raise ValueError(f"{len(aux_layer_ids)} aux layer ids for a draft trained on {cfg.num_aux_layers}")
    if not 1 <= num_speculative_tokens <= cfg.num_draft_tokens:
        raise ValueError(
            f"num_speculative_tokens={num_speculative_tokens} outside [1, {cfg.num_draft_tokens}] "
            f"(block_size={cfg.block_size}, sample_from_anchor={cfg.sample_from_anchor})"
        )
    layer_config = {**cfg.transformer_layer_config(), "dtype": dtype}
    config: dict[str, Any] = {
        "architectures": list(ARCHITECTURES[fmt]),
        "speculators_model_type": fmt,
        "transformer_layer_config": layer_config,
        "draft_vocab_size": cfg.draft_vocab_size,
        "target_hidden_size": cfg.target_hidden_size,
        "block_size": cfg.block_size,
        "aux_hidden_state_layer_ids": [int(i) for i in aux_layer_ids],
        "mask_token_id": cfg.mask_token_id,
        "sample_from_anchor": cfg.sample_from_anchor,
    }
    if fmt == "dspark":
        config.update(
            markov_rank=cfg.markov_rank,
            markov_head_type="vanilla",
            enable_confidence_head=cfg.enable_confidence_head,
            confidence_head_with_markov=cfg.confidence_head_with_markov,
        )
    else:
        if cfg.sample_from_anchor:
            raise ValueError(
                "a draft trained with sample_from_anchor=true cannot be served as DFlash: vLLM's DFlash "
                "proposer always feeds the anchor as the bonus token and samples the mask slots only"
            )
        # vLLM: dflash_config.causal = not sliding_window_non_causal; true keeps blocks bidirectional.
        config["sliding_window_non_causal"] = True
    config["speculators_config"] = {
        "algorithm": fmt,
        "proposal_methods": [proposal_method(num_speculative_tokens)],
        "default_proposal_method": "greedy",
        "verifier": {"name_or_path": verifier_name_or_path, "architectures": list(verifier_architectures),
                     **({"revision": verifier_revision} if verifier_revision else {})},
    }
    config["dtype"] = dtype
    return config
