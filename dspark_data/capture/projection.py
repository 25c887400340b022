"""`dspark dump-hidden --dry-run`: the storage bill per codec, before any capture work.

Why: a GLM-5.2 capture at the seed recipe stores 6 layers x 6144 x 2 bytes = 73,728 bytes per token
uncompressed (~15 TB for 50k conversations of 4k tokens); that should be read before starting, not
discovered on a full disk. Token counts come from the regen dataset when it exists (truncated to
seq_len), otherwise an upper bound of num_prompts x seq_len. The target's shape comes from its
config.json; for the GLM-5 family a published shape is used when the config is not available offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dspark_data.capture.layers import GLM5_HIDDEN_SIZE, GLM5_NUM_HIDDEN_LAYERS, LayerPlan
from dspark_data.capture.settings import CaptureSettings
from dspark_data.store import CODECS, SizeProjection, project_size
from dspark_data.store.parts import is_parts_parent, open_any
from dspark_data.store.topk import raw_bytes_per_token as topk_raw_bytes_per_token
from schemas.recipe import Recipe

# Published shapes used only when a hub target's config.json is not cached locally (dry runs offline).
KNOWN_SHAPES: dict[str, tuple[int, int]] = {"zai-org/GLM-5": (GLM5_NUM_HIDDEN_LAYERS, GLM5_HIDDEN_SIZE)}


@dataclass(frozen=True)
class TokenEstimate:
    samples: int
    tokens: int
    exact: bool  # counted from the regen dataset (else an upper bound from the recipe)


def target_shape(model: str, revision: str | None = None) -> tuple[int, int, str]:
    """(num_hidden_layers, hidden_size, where it came from) of a recipe's target."""
    from dspark_data.targets import load_target_info, resolve_target

    try:
        info = load_target_info(resolve_target(model), revision)
        return info.num_hidden_layers, info.hidden_size, "config.json"
    except FileNotFoundError:
        for prefix, (layers, hidden) in KNOWN_SHAPES.items():
            if model.startswith(prefix):
                return layers, hidden, f"published {prefix} shape (config.json not available offline)"
        raise


def estimate_tokens(recipe: Recipe, data_dir: Path, limit: int | None) -> TokenEstimate:
    """Tokens the capture will store: exact from the regen dataset, else num_prompts x seq_len."""
    if (data_dir / "manifest.json").is_file() or is_parts_parent(data_dir):
        lengths = open_any(data_dir).lengths  # one regen dataset, or a parent of regen parts
        if limit is not None:
            lengths = lengths[:limit]
        return TokenEstimate(len(lengths), int(lengths.clip(max=recipe.seq_len).sum()), exact=True)
    samples = recipe.prompts.num_prompts or 0
    if limit is not None:
        samples = min(samples, limit) if samples else limit
    return TokenEstimate(samples, samples * recipe.seq_len, exact=False)


def project(recipe: Recipe, plan: LayerPlan, estimate: TokenEstimate,
            measured: dict[str, tuple[float, str]] | None = None) -> list[SizeProjection]:
    """One projection per codec (the recipe's first), for the estimated tokens; a codec in `measured` uses
    the ratio measured on data of this target instead of the documented typical one."""
    names = [recipe.capture.codec] + [c for c in CODECS if c != recipe.capture.codec]
    measured = measured or {}
    return [
        project_size(
            plan.hidden_size,
            len(plan.stored_ids),
            estimate.tokens,
            codec,
            samples=estimate.samples,
            shard_bytes=recipe.capture.shard_bytes,
            measured_ratio=measured[codec][0] if codec in measured else None,
            topk_logprobs=recipe.capture.topk_logprobs,
        )
        for codec in names
    ]


def dry_run_plan(recipe: Recipe) -> tuple[LayerPlan, str]:
    """The layer plan checked against the target's shape, and where that shape came from."""
    layers, hidden, source = target_shape(recipe.target.model, recipe.target.revision)
    return CaptureSettings.for_target(recipe, layers, hidden).plan, source


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n):,} B"
        n /= 1024
    return f"{n:,.1f} PiB"


def print_dry_run(recipe: Recipe, data_dir: Path, limit: int | None, console: Console,
                  sample_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Print the projected size and file count per codec; touch nothing. `sample_dirs` (the output dir,
    which may hold a partial capture, and `--sample-from`): codec ratios measured there replace the
    documented defaults."""
    from dspark_data.store.trial import measured_ratios

    plan, source = dry_run_plan(recipe)
    estimate = estimate_tokens(recipe, data_dir, limit)
    measured: dict[str, tuple[float, str]] = {}
    for d in sample_dirs or []:
        for codec, got in measured_ratios(d, plan.stored_ids, plan.hidden_size).items():
            measured.setdefault(codec, got)
    projections = project(recipe, plan, estimate, measured)
    k = recipe.capture.topk_logprobs
    topk_note = f" + top-{k} log-probs {topk_raw_bytes_per_token(k):,} bytes/token" if k else ""
    kind = "counted from the regen data" if estimate.exact else "upper bound num_prompts x seq_len: no regen data yet"
    console.print(
        f"dump-hidden --dry-run: {recipe.target.model}, {plan.num_hidden_layers} layers x {plan.hidden_size} "
        f"({source})\nlayers {list(plan.stored_ids)}: {plan.bytes_per_token():,} bytes/token uncompressed"
        f"{topk_note}; "
        f"{estimate.samples:,} samples, {estimate.tokens:,} tokens ({kind})"
    )
    table = Table("codec", "size", "bytes/token", "ratio", "ratio from", "shards", "files")
    for p in projections:
        name = f"{p.codec} (recipe)" if p.codec == recipe.capture.codec else p.codec
        size = format_bytes(p.bytes)
        origin = f"measured: {measured[p.codec][1]}" if p.codec in measured else "typical (docs)"
        table.add_row(name, size, f"{p.bytes_per_token:,.0f}", f"{p.ratio:.2f}", origin, f"{p.shards:,}",
                      f"{p.files:,}")
    console.print(table)
    return {
        "stage": "hidden",
        "dry_run": True,
        "layer_ids": list(plan.stored_ids),
        "hidden_size": plan.hidden_size,
        "bytes_per_token_raw": plan.bytes_per_token() + topk_raw_bytes_per_token(k),
        "topk_logprobs": k,
        "samples": estimate.samples,
        "tokens": estimate.tokens,
        "tokens_exact": estimate.exact,
        "projections": [p.to_dict() for p in projections],
        "measured_ratios": {codec: {"ratio": r, "from": d} for codec, (r, d) in measured.items()},
    }
