"""`dspark config show`: print the fully resolved recipe (defaults + file + overrides)."""

from __future__ import annotations

import json

import typer
import yaml

from cli.common import RecipeOpt, SeedOpt, SetOpt, resolve_recipe
from schemas import fingerprint
from schemas.loading import DEFAULT_RECIPE

config_app = typer.Typer(help="Inspect resolved recipes.", no_args_is_help=True)


@config_app.command("show")
def show(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print every field of the resolved recipe and its fingerprint."""
    resolved = resolve_recipe(recipe, set_, seed)
    tree = resolved.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(tree, indent=2))
    else:
        typer.echo(yaml.safe_dump(tree, sort_keys=False, default_flow_style=False).rstrip())
    typer.echo(f"# fingerprint: {fingerprint(tree)}")
