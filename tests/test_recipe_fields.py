"""Every recipe field is read by some code path outside schemas/ (issue #12): a field that does nothing
cannot ship.

How: an AST scan of cli/, dspark_data/ and dspark_train/. A leaf field `section.field` counts as read
where the code reads attribute `field` of an object that is that section:
- directly, `<anything>.section.field` (e.g. `recipe.train.lr`, `self.recipe.capture.codec`);
- through a name bound to the section in the same module: an assignment `t = recipe.target`, or a
  parameter annotated with the section's model (`def f(cfg: TrainConfig)`), then `t.dtype`;
- as a key of a recipe read back from JSON: `recipe["train"]["lr"]`, `recipe.get("eval", {}).get("k")`.
Top-level scalars (`seed`, `seq_len`, ...) count when `<recipe-like>.field` is read. Writes
(`x.field = ...`) and whole-section dumps (fingerprints) do not count. New fields need nothing here:
they pass as soon as some code reads them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

from schemas.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("cli", "dspark_data", "dspark_train")
# Fields no stage needs to read, and why.
NOT_STAGE_INPUTS = {
    "schema_version": "the format version, checked by schemas.loading when the recipe is parsed",
    "description": "prose for the person choosing a recipe (`dspark config show` prints it)",
}


def _sections(model: type[BaseModel] = Recipe, path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Section model class name -> its path (e.g. 'SamplingConfig' -> ('regen', 'sampling'))."""
    out: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out[sub.__name__] = (*path, name)
            out.update(_sections(sub, (*path, name)))
    return out


def _leaves(model: type[BaseModel] = Recipe, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _leaves(sub, (*path, name))
        else:
            out.append((*path, name))
    return out


def _const_key(node: ast.AST) -> str | None:
    """'k' for `x["k"]` or `x.get("k", ...)`."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value
    return None


def _inner(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.Subscript):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.value
    return None


def _reads(tree: ast.AST, sections: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
    """(parent attribute or section name, field) pairs read in one module."""
    section_names = {path[-1] for path in sections.values()}
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr in section_names:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    alias[target.id] = node.value.attr
        elif isinstance(node, ast.arg) and node.annotation is not None:
            annotation = ast.unparse(node.annotation).strip("'\"").split("|")[0].strip().split(".")[-1]
            if annotation in sections:
                alias[node.arg] = sections[annotation][-1]
    pairs: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            value = node.value
            if isinstance(value, ast.Attribute):
                pairs.add((value.attr, node.attr))
            elif isinstance(value, ast.Name):
                pairs.add((alias.get(value.id, value.id), node.attr))
        key = _const_key(node)
        inner = _inner(node) if key is not None else None
        parent = _const_key(inner) if inner is not None else None
        if key is not None and parent is not None:
            pairs.add((parent, key))
    return pairs


RECIPE_NAMES = {"recipe", "r", "cfg", "resolved", "config"}  # what code calls a Recipe object


def unread_fields(files: list[Path]) -> list[str]:
    sections = _sections()
    pairs: set[tuple[str, str]] = set()
    for path in files:
        pairs |= _reads(ast.parse(path.read_text(), filename=str(path)), sections)
    missing = []
    for leaf in _leaves():
        if len(leaf) == 1:
            if leaf[0] in NOT_STAGE_INPUTS:
                continue
            found = any(parent in RECIPE_NAMES and f == leaf[0] for parent, f in pairs)
        else:
            found = (leaf[-2], leaf[-1]) in pairs
        if not found:
            missing.append(".".join(leaf))
    return missing


def _code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]


def test_every_recipe_field_is_read_by_code() -> None:
    missing = unread_fields(_code_files())
    assert not missing, f"recipe fields no code outside schemas/ reads (wire them or remove them): {missing}"


def test_the_scan_sees_each_way_of_reading_and_misses_none(tmp_path) -> None:
    """The scan can fail: with the code that reads them hidden, fields are reported unread."""
    everything = unread_fields([])
    assert "train.lr" in everything and "target.dtype" in everything and "regen.sampling.top_p" in everything
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(recipe, cfg: 'SamplingConfig'):\n"
        "    t = recipe.target\n"
        "    recipe.train.lr = 1  # a write is not a read\n"
        "    return t.dtype, cfg.top_p, recipe['eval']['num_prompts'], recipe.get('loss', {}).get('gamma')\n"
    )
    left = set(unread_fields([probe]))
    assert {"target.dtype", "regen.sampling.top_p", "eval.num_prompts", "loss.gamma"}.isdisjoint(left)
    assert "train.lr" in left
