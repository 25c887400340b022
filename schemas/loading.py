"""Resolve a recipe: built-in name or file path, then `--set a.b=value` overrides, then validation.

Errors name the offending key (for unknown keys and invalid values) or the file, so a user can
fix a recipe without reading a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.recipe import Recipe

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "tiny"  # the recipe every command and entry point uses when none is named


class RecipeError(ValueError):
    """A recipe that cannot be resolved; the message names the key, value or file at fault."""


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in `recipes/`."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """Map a built-in recipe name or a path to the recipe file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml", ".json"} or candidate.exists():
        if not candidate.is_file():
            raise RecipeError(f"recipe file not found: {candidate}")
        return candidate
    builtin = RECIPES_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise RecipeError(f"unknown recipe {name_or_path!r}: not a file and not one of {builtin_recipes()}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value (`3e-4`, `[1, 2]`, `null`, `true`)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
    return keys, value


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `tree[k0][k1]...= value`, checking each key exists in the Recipe schema."""
    model: Any = Recipe
    node = tree
    for depth, key in enumerate(keys):
        fields = getattr(model, "model_fields", None)
        dotted = ".".join(keys[: depth + 1])
        if fields is not None:
            if key not in fields:
                raise RecipeError(f"unknown recipe key {dotted!r} (known: {', '.join(sorted(fields))})")
            annotation = fields[key].annotation
            model = annotation if isinstance(annotation, type) else None
        if depth == len(keys) - 1:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise RecipeError(f"recipe key {dotted!r} is not a section")
                node[key] = child
            node = child


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key."""
    lines = [f"invalid recipe {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "missing" else ""))
    return "\n".join(lines)


def load_recipe(
    name_or_path: str = DEFAULT_RECIPE, overrides: list[str] | None = None, seed: int | None = None
) -> Recipe:
    """Load, override and validate a recipe. `seed` (the `--seed` flag) wins over `seed` in the file."""
    path = recipe_path(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    except (UnicodeDecodeError, OSError) as exc:  # binary junk, a directory, no permission
        raise RecipeError(f"{path}: cannot read the recipe: {exc}") from exc
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    if seed is not None:
        tree["seed"] = seed
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, str(path))) from None
