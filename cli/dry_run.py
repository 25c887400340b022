"""`dspark train --dry-run`: print the per-GPU memory plan (dspark_train/memory_plan.py); nothing is trained."""

from __future__ import annotations

from cli.common import console, fail


def print_memory_plan(recipe, world_size: int, gpu_memory: str | None) -> int:  # noqa: ANN001 - a Recipe
    """Plan on fake tensors (no allocation) and print the table; returns the exit code."""
    from dspark_train.memory_plan import format_plan, parse_bytes, plan_for_recipe

    try:
        memory = parse_bytes(gpu_memory) if gpu_memory is not None else None
        plan, title = plan_for_recipe(recipe, world_size=world_size, gpu_memory=memory)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), code=2)
    console.print(format_plan(plan, title), highlight=False, markup=False, soft_wrap=True)
    return 0
