"""What an evaluation measures, shared by offline (`EvalOptions`) and live (`LiveOptions`) eval.

Both walk the same (prompt set, sampling mode) grid with the same token budget, so their tables compare
line for line. The defaults are the recipe's (`schemas.recipe.EvalConfig`): a library caller that leaves
them out measures what `dspark eval` measures, and no second copy of them can drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dspark_train.eval.speculative import SamplingParams
from schemas.recipe import EvalConfig, Recipe, TargetConfig

EVAL_DEFAULTS = EvalConfig()
RUN_SEED: int = Recipe.model_fields["seed"].default
TARGET_DTYPE: str = TargetConfig.model_fields["dtype"].default

MODES = {
    "greedy": SamplingParams(temperature=0.0),
    "sampled": SamplingParams(temperature=1.0, top_p=0.95),  # the seed card's "default sampling"
}
MODE_TITLES = {"greedy": "Greedy (temperature=0)", "sampled": "Default sampling (temperature=1.0, top_p=0.95)"}


@dataclass(kw_only=True)
class EvalScope:
    """Where the results go and what is measured: prompt sets x modes, prompts per set, new tokens."""

    out_dir: Path
    prompt_sets: list[str] = field(default_factory=lambda: list(EVAL_DEFAULTS.prompt_sets))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    num_prompts: int | None = EVAL_DEFAULTS.num_prompts
    max_new_tokens: int = EVAL_DEFAULTS.max_new_tokens
