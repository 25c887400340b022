"""load_target_head reads only embed/norm/lm_head (single file, sharded, tied); draft_vocab_probs restricts via t2d."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dspark_data.targets.weights import TargetHead, draft_vocab_probs, draft_vocab_probs_and_greedy, load_target_head


def _write_target(tmp: Path, *, sharded: bool, tied: bool, prefix: str = "model.") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    v, h = 11, 4
    tensors = {
        f"{prefix}embed_tokens.weight": torch.randn(v, h),
        f"{prefix}norm.weight": torch.rand(h) + 0.5,
        f"{prefix}layers.0.mlp.up_proj.weight": torch.randn(3, h),
    }
    if not tied:
        tensors["lm_head.weight"] = torch.randn(v, h)
    (tmp / "config.json").write_text(
        json.dumps({"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "vocab_size": v})
    )
    if sharded:
        names = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
        for fname, keys in shards.items():
            save_file({k: tensors[k] for k in keys}, str(tmp / fname))
        index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(tensors, str(tmp / "model.safetensors"))
    return tensors


@pytest.mark.parametrize("sharded", [False, True])
def test_load_untied(tmp_path: Path, sharded: bool) -> None:
    t = _write_target(tmp_path, sharded=sharded, tied=False)
    head = load_target_head(tmp_path)
    assert torch.equal(head.embed, t["model.embed_tokens.weight"]) and torch.equal(head.norm, t["model.norm.weight"])
    assert torch.equal(head.lm_head, t["lm_head.weight"]) and not head.tied and head.rms_norm_eps == 1e-5


def test_load_tied_and_dtype(tmp_path: Path) -> None:
    t = _write_target(tmp_path, sharded=True, tied=True)
    head = load_target_head(tmp_path, dtype=torch.bfloat16)
    assert head.tied and head.lm_head is head.embed and head.embed.dtype == torch.bfloat16
    torch.testing.assert_close(head.embed.float(), t["model.embed_tokens.weight"], atol=1e-2, rtol=1e-2)


def test_unknown_names_fail_with_a_hint(tmp_path: Path) -> None:
    _write_target(tmp_path, sharded=False, tied=False, prefix="backbone.")
    with pytest.raises(KeyError, match="weights.py"):
        load_target_head(tmp_path)


def test_draft_vocab_probs_restricted_not_renormalised() -> None:
    h = 2
    head = TargetHead(
        embed=torch.zeros(4, h),
        norm=torch.ones(h),
        lm_head=torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]),
        rms_norm_eps=0.0,
    )
    hidden = torch.tensor([[3.0, 0.0], [0.0, 5.0]])  # rms-normalised: [sqrt2, 0] and [0, sqrt2]
    t2d = torch.tensor([True, True, False, True])  # target 2 (the argmax of row 0) is outside the draft vocab
    probs, greedy = draft_vocab_probs_and_greedy(hidden, head, t2d)
    s = math.sqrt(2)
    full0 = torch.softmax(torch.tensor([s, 0.0, 2 * s, 0.0]), -1)
    full1 = torch.softmax(torch.tensor([0.0, s, 0.0, 0.0]), -1)
    torch.testing.assert_close(probs, torch.stack([full0[[0, 1, 3]], full1[[0, 1, 3]]]))
    assert probs[0].sum() < 1 and greedy.tolist() == [-1, 1]
    torch.testing.assert_close(draft_vocab_probs(hidden.view(1, 2, 2), head, t2d), probs.view(1, 2, 3))
