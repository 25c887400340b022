"""The DSpark draft model: config, backbone, heads, masks, presets. See docs/model.md."""

from dspark_train.model.config import DraftConfig
from dspark_train.model.draft import DraftOutput, DSparkDraft, Proposal
from dspark_train.model.heads import ConfidenceHead, MarkovHead
from dspark_train.model.masks import anchor_block_mask, block_positions, predicted_positions
from dspark_train.model.presets import PRESETS, preset_config

__all__ = [
    "PRESETS",
    "ConfidenceHead",
    "DSparkDraft",
    "DraftConfig",
    "DraftOutput",
    "MarkovHead",
    "Proposal",
    "anchor_block_mask",
    "block_positions",
    "predicted_positions",
    "preset_config",
]
