"""torch.distributed's environment from SLURM's, for processes `srun` starts directly (no torchrun).

Two ways to run the trainer on a SLURM allocation (docs/cluster.md):
- `srun --ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES --node-rank $SLURM_NODEID ...`: torchrun sets
  RANK/WORLD_SIZE/LOCAL_RANK for its children; nothing here applies (RANK is already set).
- `srun --ntasks-per-node 8 python -m dspark_train ...` (one task per GPU): SLURM sets SLURM_PROCID,
  SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_JOB_NODELIST; `slurm_dist_env` turns them into RANK,
  WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR (the first node of the job) and
  MASTER_PORT, which `init_distributed` then reads as it reads torchrun's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# torchrun's own default rendezvous port; override with $MASTER_PORT (two jobs sharing a node).
DEFAULT_MASTER_PORT = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03', 'node7' -> 'node7'."""
    m = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if m is None or not m.group(1):
        raise ValueError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _leading_int(value: str) -> int:
    """'8(x2)' / '8,4' / '8' -> 8 (SLURM's tasks-per-node notation)."""
    m = re.match(r"\s*(\d+)", value)
    if m is None:
        raise ValueError(f"cannot read a task count from {value!r}")
    return int(m.group(1))


def slurm_dist_env(env: Mapping[str, str]) -> dict[str, str]:
    """Variables to add for a process srun started as one of several tasks; {} under torchrun or alone."""
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or env["SLURM_NTASKS"]
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(_leading_int(per_node)),
        "NODE_RANK": env.get("SLURM_NODEID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT),
    }
    return out


def apply_slurm_env() -> dict[str, str]:
    """Fill os.environ from SLURM's when srun started this process directly; returns what was set."""
    added = slurm_dist_env(os.environ)
    os.environ.update(added)
    return added
