"""Preemption-safe training: every rank stops at the same optimizer step, and the open log window survives.

SIGTERM reaches the ranks of a job at different instants (SLURM signals every task, torchrun forwards to
its workers one by one), and sometimes reaches only some of them. A rank that stopped alone would leave the
others blocked in the next all-reduce, so each step ends with a one-element all-reduce of "did anyone get
SIGTERM" (a host sync per step: microseconds next to a DSpark step); all ranks then checkpoint that step
and exit together.

Why the log window is checkpointed: a resumed run must write the same `metrics.jsonl` records as an
uninterrupted one, and a train record averages the steps since the previous record. Each rank's running
sums are saved (gathered to rank 0's state.json) so the record after a resume averages the same steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

PREEMPTED_MESSAGE = (
    "preempted (SIGTERM) after step {step} of {total}: checkpoint {checkpoint} written. "
    "Rerun the same command (or add --resume) to continue; the result equals an uninterrupted run."
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree_to_stop(local: bool, device: torch.device) -> bool:
    """True on every rank when any rank was asked to stop (a no-op in a world of one)."""
    if not _distributed():
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def gather_window(running: dict[str, torch.Tensor], steps: int, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's open log window `{"steps": n, "running": {key: value}}`, in rank order (collective)."""
    keys = sorted(running)
    values = torch.stack([running[k].float().reshape(()) for k in keys]) if keys else torch.zeros(0)
    mine = {"steps": int(steps), "running": {k: float(values[i]) for i, k in enumerate(keys)}}
    if not _distributed():
        return [mine]
    # Tensors, not all_gather_object (that pickles): every rank holds the same keys (the same step figures).
    buf = torch.cat([values.double(), torch.tensor([float(steps)], dtype=torch.float64)]).to(device)
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, buf)
    return [
        {"steps": int(p[-1]), "running": {k: float(p[i]) for i, k in enumerate(keys)}} for p in (t.cpu() for t in parts)
    ]


def restore_window(saved: list[dict[str, Any]] | None, rank: int) -> tuple[dict[str, torch.Tensor], int]:
    """This rank's running sums and step count from a checkpoint (none saved: an empty window)."""
    if not saved or rank >= len(saved):
        return {}, 0
    mine = saved[rank]
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in mine["running"].items()}, int(mine["steps"])
