"""The torch dtype of each float dtype name a recipe or flag may give (export's --dtype, eval's target).

One table, keyed by the names `schemas.recipe.FloatDtype` allows, so export and eval cannot accept
different sets of names.
"""

from __future__ import annotations

from typing import get_args

import torch

from schemas.recipe import FloatDtype

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(FloatDtype)}
