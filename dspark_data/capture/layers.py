"""Which layers a capture stores, in which order, checked against the target before any work starts.

Layer ids follow vLLM's convention (see docs/formats/hidden-states.md): id k < N is the residual stream
entering decoder layer k (id 0 = the embeddings), id N = num_hidden_layers is the last layer's output
before the final norm. These are exactly the values vLLM's `eagle_aux_hidden_state_layer_ids` selects,
so recipe ids are passed to vLLM unchanged (vLLM's speculators loader maps a DFlash/DSpark export's
`aux_hidden_state_layer_ids` to `target_layer_ids = aux - 1`, the *output* of layer k-1: same tensor).

Stored order: the recipe's aux ids in recipe order, then N when `include_last_layer`. vLLM returns them
sorted and deduplicated, so the vLLM backend permutes to this order (`engine_permutation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# GLM-5.x (`glm_moe_dsa`): the seed recipe's target shape, checked by tests and `dspark dump-hidden --dry-run`.
GLM5_NUM_HIDDEN_LAYERS = 78
GLM5_HIDDEN_SIZE = 6144


class CaptureConfigError(ValueError):
    """A capture setting that cannot work with the target; the message says what to change."""


class LayerMismatch(ValueError):
    """An engine returned other layers than the plan asked for (each caller reports it its own way)."""


@dataclass(frozen=True)
class LayerPlan:
    """The layers one capture stores and the target shape they were checked against."""

    aux_ids: tuple[int, ...]
    include_last_layer: bool
    num_hidden_layers: int
    hidden_size: int

    @property
    def last_id(self) -> int:
        return self.num_hidden_layers

    @property
    def stored_ids(self) -> tuple[int, ...]:
        """Ids in stored order: aux (recipe order) then N."""
        return self.aux_ids + ((self.last_id,) if self.include_last_layer else ())

    @property
    def engine_ids(self) -> tuple[int, ...]:
        """Ids in the order vLLM returns them (ascending, unique)."""
        return tuple(sorted(set(self.stored_ids)))

    def engine_permutation(self) -> list[int]:
        """Index into the engine's layer axis that yields stored order."""
        position = {layer: i for i, layer in enumerate(self.engine_ids)}
        return [position[layer] for layer in self.stored_ids]

    def to_stored(self, hidden: torch.Tensor, layer_ids: Sequence[int]) -> torch.Tensor:
        """An engine's states `[T, len(layer_ids), H]` in stored order `[T, L, H]`: the one place states are
        taken by layer id (vLLM backend, gateway, transformers backend). `layer_ids` names the engine's layer
        axis and must be `engine_ids` (ascending, unique, as vLLM returns them): anything else means the
        engine captured other layers than asked for, a `LayerMismatch`, never a silent reorder."""
        if tuple(int(i) for i in layer_ids) != self.engine_ids:
            raise LayerMismatch(f"engine captured layers {tuple(layer_ids)}, expected {self.engine_ids}")
        return hidden[:, self.engine_permutation()]

    def bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Uncompressed size of one token's stored states (bf16 by default)."""
        return len(self.stored_ids) * self.hidden_size * dtype_bytes


def plan_layers(
    aux_ids: Sequence[int], include_last_layer: bool, num_hidden_layers: int, hidden_size: int
) -> LayerPlan:
    """Check the recipe's layer ids against the target's shape and return the plan.

    Errors: an id outside [0, N]; a repeated id; the last layer listed as aux while `include_last_layer`
    also stores it (it would be stored twice); a non-positive target shape.
    """
    if num_hidden_layers < 1 or hidden_size < 1:
        raise CaptureConfigError(
            f"target config gives num_hidden_layers={num_hidden_layers}, hidden_size={hidden_size}; "
            "check the target's config.json"
        )
    aux = tuple(int(i) for i in aux_ids)
    if not aux:
        raise CaptureConfigError("capture.aux_layers is empty; list at least one layer id")
    bad = [i for i in aux if not 0 <= i <= num_hidden_layers]
    if bad:
        raise CaptureConfigError(
            f"capture.aux_layers {list(aux)}: ids {bad} are outside the target, which has "
            f"{num_hidden_layers} layers (valid ids 0..{num_hidden_layers}, where {num_hidden_layers} is "
            "the last layer's output before the final norm)"
        )
    if len(set(aux)) != len(aux):
        raise CaptureConfigError(f"capture.aux_layers {list(aux)} repeats a layer id")
    if include_last_layer and num_hidden_layers in aux:
        raise CaptureConfigError(
            f"capture.aux_layers lists {num_hidden_layers} (the last layer) and capture.include_last_layer "
            "stores it again; drop it from aux_layers or set include_last_layer=false"
        )
    return LayerPlan(aux, include_last_layer, num_hidden_layers, hidden_size)


def check_hidden_size(plan: LayerPlan, observed: int, where: str) -> None:
    """A backend (or an existing output) that disagrees with the target config is an error, not a reshape."""
    if observed != plan.hidden_size:
        raise CaptureConfigError(
            f"hidden size mismatch: the target config says {plan.hidden_size}, {where} says {observed}; "
            "the target path or the existing output does not belong to this recipe"
        )
