"""The connector's pure parts (no engine): locating the hidden-state KV-cache group, slot maths, gathers.

The group cases mirror vLLM 0.32's `get_kv_cache_groups`: a plain-attention target puts the hidden-state
layer in its own group; a dense MLA target merges it into the MLA group (`UniformTypeKVCacheSpecs`,
because `HiddenStateCacheSpec` subclasses `MLAAttentionSpec`); a DSA target adds an indexer group beside
that. vLLM's example connector looks for a group whose spec *is* a HiddenStateCacheSpec and fails on the
last case ("MLA verifiers are unsupported"); ours finds the layer by name in all three.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    HiddenStateCacheSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    MLAAttentionSpec,
    UniformTypeKVCacheSpecs,
)

from dspark_data.capture.connector import find_hidden_group, gather_slots, group_block_size, slot_indices  # noqa: E402

HIDDEN = "model.cache_only_layers.4"


def _config(groups: list[KVCacheGroupSpec]) -> KVCacheConfig:
    return KVCacheConfig(num_blocks=8, kv_cache_tensors=[], kv_cache_groups=groups)


def _hidden_spec(block_size: int = 16) -> HiddenStateCacheSpec:
    return HiddenStateCacheSpec(block_size=block_size, num_kv_heads=3, head_size=128, dtype=torch.bfloat16)


def _mla_spec() -> MLAAttentionSpec:
    return MLAAttentionSpec(block_size=16, num_kv_heads=1, head_size=576, dtype=torch.bfloat16)


def test_hidden_group_alone_beside_plain_attention():
    attn = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=64, dtype=torch.bfloat16)
    cfg = _config(
        [KVCacheGroupSpec([f"layers.{i}.attn" for i in range(4)], attn), KVCacheGroupSpec([HIDDEN], _hidden_spec(8))]
    )
    assert find_hidden_group(cfg, 4) == (1, HIDDEN)
    assert group_block_size(cfg, 1, HIDDEN) == 8


def test_hidden_group_shared_with_mla_layers():
    specs = {f"layers.{i}.attn": _mla_spec() for i in range(4)} | {HIDDEN: _hidden_spec()}
    cfg = _config([KVCacheGroupSpec(list(specs), UniformTypeKVCacheSpecs(block_size=16, kv_cache_specs=specs))])
    assert find_hidden_group(cfg, 4) == (0, HIDDEN)
    assert group_block_size(cfg, 0, HIDDEN) == 16


def test_hidden_group_shared_with_mla_beside_an_indexer_group():
    """The DSA shape: no group's spec is a HiddenStateCacheSpec, and there are two groups."""
    specs = {f"layers.{i}.attn": _mla_spec() for i in range(4)} | {HIDDEN: _hidden_spec()}
    indexer = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=132, dtype=torch.uint8)
    cfg = _config(
        [
            KVCacheGroupSpec([f"layers.{i}.indexer" for i in range(4)], indexer),
            KVCacheGroupSpec(list(specs), UniformTypeKVCacheSpecs(block_size=16, kv_cache_specs=specs)),
        ]
    )
    assert not any(isinstance(g.kv_cache_spec, HiddenStateCacheSpec) for g in cfg.kv_cache_groups)
    assert find_hidden_group(cfg, 4) == (1, HIDDEN)


def test_missing_hidden_layer_is_a_clear_error():
    attn = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="extract_hidden_states"):
        find_hidden_group(_config([KVCacheGroupSpec(["layers.0.attn"], attn)]), 4)


def test_slots_follow_the_block_table():
    assert slot_indices([3, 0, 7], block_size=4, num_tokens=10).tolist() == [12, 13, 14, 15, 0, 1, 2, 3, 28, 29]
    with pytest.raises(ValueError, match="cannot hold"):
        slot_indices([1], block_size=4, num_tokens=5)


def test_gather_reads_what_the_cache_only_layer_wrote():
    """Write like vLLM's `basic_cache` (kv[slot // bs, :, slot % bs] = states), read back with our gather,
    also through kernel blocks smaller than the group's block (a view with more, smaller blocks)."""
    blocks, layers, block, hidden = 6, 3, 4, 8
    cache = torch.zeros(blocks, layers, block, hidden)
    slots = slot_indices([5, 2], block_size=block, num_tokens=7)
    states = torch.randn(7, layers, hidden)
    cache[slots // block, :, slots % block] = states
    assert torch.equal(gather_slots(cache, slots), states)
    kernel_view = cache.view(blocks, layers, 2, 2, hidden).permute(0, 2, 1, 3, 4).reshape(blocks * 2, layers, 2, hidden)
    assert torch.equal(gather_slots(kernel_view, slots), states)
