"""Load an exported directory back as a runnable draft, from what vLLM reads: config.json + model.safetensors.

Offline evaluation must score the artefact that gets served, not the training checkpoint, so the draft
is rebuilt from the speculators `config.json` alone (the same fields vLLM's `update_dspark` /
`update_dflash` read) and its tensors are loaded by name with every name required. The embedding comes
from the verifier, as in vLLM; `lm_head.weight` comes from the export when it ships one (reduced vocab).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dspark_data.targets.weights import load_target_head
from dspark_train.model import DraftConfig, DSparkDraft


@dataclass
class LoadedDraft:
    model: DSparkDraft
    config: DraftConfig
    fmt: str  # "dspark" or "dflash"
    aux_layer_ids: list[int]  # vLLM convention: id k = residual stream entering decoder layer k
    num_speculative_tokens: int
    verifier: str
    config_json: dict[str, Any]
    verifier_revision: str | None = None  # speculators_config.verifier.revision: the target weights it was trained on


def draft_config_from_export(c: dict[str, Any]) -> DraftConfig:
    """DraftConfig from a speculators config.json (dspark or dflash), as vLLM would build the draft."""
    fmt = c.get("speculators_model_type")
    if fmt not in ("dspark", "dflash"):
        raise ValueError(f"speculators_model_type {fmt!r}: only dspark and dflash exports can be evaluated")
    tl = c["transformer_layer_config"]
    rope = dict(tl.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", tl.get("rope_theta", 1_000_000.0)))
    scaling = rope if rope.get("rope_type", "default") != "default" else None
    heads = int(tl["num_attention_heads"])
    dspark = fmt == "dspark"
    return DraftConfig(
        hidden_size=int(tl["hidden_size"]),
        intermediate_size=int(tl["intermediate_size"]),
        num_layers=int(tl["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(tl.get("num_key_value_heads") or heads),
        head_dim=int(tl.get("head_dim") or int(tl["hidden_size"]) // heads),
        target_hidden_size=int(c.get("target_hidden_size") or tl["hidden_size"]),
        num_aux_layers=len(c["aux_hidden_state_layer_ids"]),
        target_vocab_size=int(tl["vocab_size"]),
        draft_vocab_size=int(c.get("draft_vocab_size") or tl["vocab_size"]),
        mask_token_id=int(c["mask_token_id"]),
        rms_norm_eps=float(tl.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(tl.get("max_position_embeddings") or 131072),
        activation=tl.get("hidden_act", "silu"),
        block_size=int(c.get("block_size", 8)),
        markov_rank=int(c.get("markov_rank", 256)) if dspark else 0,
        enable_confidence_head=bool(c.get("enable_confidence_head", True)) if dspark else False,
        confidence_head_with_markov=bool(c.get("confidence_head_with_markov", True)) if dspark else False,
        sample_from_anchor=bool(c.get("sample_from_anchor", False)),
    )


def load_export(
    directory: Path, *, target: str | None = None, device: str | torch.device = "cpu", revision: str | None = None
) -> LoadedDraft:
    """The draft of an export directory, in float32 on `device`, with the verifier's embedding.

    `target` overrides `speculators_config.verifier.name_or_path` (e.g. a local copy of a hub target), and
    `revision` its `verifier.revision`; the recorded revision applies only to the recorded verifier.
    """
    directory = Path(directory)
    config_json = json.loads((directory / "config.json").read_text())
    cfg = draft_config_from_export(config_json)
    recorded = config_json["speculators_config"]["verifier"]
    verifier = target or recorded["name_or_path"]
    revision = revision or (None if target else recorded.get("revision"))
    head = load_target_head(verifier, revision=revision)
    tensors = load_file(str(directory / "model.safetensors"))
    t2d = tensors.get("t2d")
    if t2d is None and "d2t" in tensors:  # vLLM needs only d2t; rebuild the mask from it
        t2d = torch.zeros(cfg.target_vocab_size, dtype=torch.bool)
        t2d[torch.arange(cfg.draft_vocab_size) + tensors["d2t"]] = True
        tensors["t2d"] = t2d
    model = DSparkDraft(cfg, head.embed.float(), head.lm_head.float(), t2d)
    expected = set(model.state_dict())  # parameters + persistent d2t/t2d
    shipped_vocab = {"lm_head.weight", "d2t", "t2d"} & set(tensors)
    params = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k != "lm_head.weight"}
    missing = sorted(expected - set(params) - ({"d2t", "t2d"} - shipped_vocab))
    unexpected = sorted(set(params) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{directory}: tensors do not fit config.json: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    model.load_state_dict(params, strict=False)
    if "lm_head.weight" in tensors:
        model.lm_head_weight = tensors["lm_head.weight"].float().clone()
    proposal = config_json["speculators_config"]["proposal_methods"][0]
    return LoadedDraft(
        model=model.to(device).eval(),
        config=cfg,
        fmt=config_json["speculators_model_type"],
        aux_layer_ids=[int(i) for i in config_json["aux_hidden_state_layer_ids"]],
        num_speculative_tokens=int(proposal["speculative_tokens"]),
        verifier=verifier,
        config_json=config_json,
        verifier_revision=revision,
    )
