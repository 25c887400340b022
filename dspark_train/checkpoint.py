"""Training checkpoints: one directory per step, written atomically, enough to resume bit-exactly.

Layout of `<train dir>/checkpoints/step-000100/`:
- `model.safetensors`      fp32 master weights (full, unsharded; frozen target-derived tensors that the
                           trainer rebuilds from the target are left out, see `Checkpointer(skip=...)`)
- `optimizer.safetensors`  AdamW tensors keyed `state/<param name>/<key>` (exp_avg, exp_avg_sq, step)
- `optimizer.json`         param groups (hyper-parameters, parameter names): the scalars
- `rng-rank00000.safetensors`  per-rank torch RNG states (CPU, and CUDA when present)
- `state.json`             step, world size, loader and lr-schedule state, counters, fingerprints,
                           the draft architecture (`schemas.training.CheckpointState`)
- `recipe.json`            the resolved recipe the run was started with

Atomicity: everything is written into `.tmp-step-000100/`, fsynced, then published under its final name
(`dspark_data.atomic.publish_dir`: a re-saved step is swapped whole, never deleted first); the
`latest` pointer file (the step directory's name) is replaced last. A run killed at any instant leaves
either the previous `latest` or the new one, never a half-written checkpoint that `latest` names. Only
safetensors and JSON are written, and nothing is unpickled on load.

Distributed: model and optimizer state are gathered to full tensors with
`torch.distributed.checkpoint.state_dict` (works for plain modules, DDP and FSDP2 alike); rank 0 writes
them, every rank writes its RNG file, and every rank reads the full files back on resume (the
checkpoint directory must be on storage all ranks see).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dspark_data.atomic import atomic_write_bytes, backup_path, fsync_path, publish_dir, recover_dir, temp_sibling
from schemas.training import STATE_NAME, CheckpointState

LATEST = "latest"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, I/O error); the previous one is intact."""


class CheckpointMismatch(ValueError):
    """A checkpoint that cannot be resumed by this run (world size, model shape)."""


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fsync_path(path)


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (the draft has no dropout today; kept so sampling ops stay exact)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an FQN-keyed optimizer state dict into tensors (safetensors) and scalars (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entry in osd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        _, rest = flat.split("/", 1)
        name, key = rest.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    for name, entry in meta.get("scalar_state", {}).items():
        state.setdefault(name, {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


class Checkpointer:
    """Save and restore checkpoints under `<train dir>/checkpoints/`."""

    def __init__(self, train_dir: Path, *, rank: int = 0, world_size: int = 1, skip: Iterable[str] = ()) -> None:
        self.dir = Path(train_dir) / "checkpoints"
        self.rank = rank
        self.world_size = world_size
        self.skip = frozenset(skip)  # model keys not written (rebuilt from the target on load)

    # --- discovery ---
    def latest(self) -> Path | None:
        """The directory `latest` names, or None when there is no complete checkpoint."""
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        if not re.fullmatch(r"step-\d+", name):  # a hand-edited pointer must not lead outside the checkpoints
            raise CheckpointMismatch(f"{pointer} names {name!r}, not a step-NNNNNN directory of {self.dir}: "
                                     "fix or remove the pointer")
        path = self.dir / name
        if self.rank == 0:
            recover_dir(path)  # a re-save of this step killed between its renames: the old one comes back
        elif not (path / STATE_NAME).is_file() and (backup_path(path) / STATE_NAME).is_file():
            path = backup_path(path)  # the same, read-only, while rank 0 renames it back
        return path if (path / STATE_NAME).is_file() else None

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        return json.loads((path / STATE_NAME).read_text())

    @staticmethod
    def read_recipe(path: Path) -> dict[str, Any]:
        return json.loads((path / "recipe.json").read_text())

    # --- save ---
    @contextlib.contextmanager
    def _write_errors(self, step: int) -> Iterator[None]:
        """A failed write (disk full, I/O error) becomes CheckpointWriteError naming the directory."""
        try:
            yield
        except (OSError, SafetensorError) as exc:
            raise CheckpointWriteError(
                f"cannot write checkpoint {temp_sibling(self.dir / step_name(step))}: {exc}; the previous checkpoint "
                f"({self.latest() or 'none'}) is intact: free space, then rerun the same command to resume"
            ) from exc

    def save(
        self,
        step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        recipe: dict[str, Any],
    ) -> Path:
        """Write checkpoint `step` (collective: every rank must call it) and point `latest` at it.

        A failed write (disk full, I/O error) raises CheckpointWriteError naming the directory; `latest` still
        names the previous checkpoint, so a rerun of the same command resumes from there.
        """
        with self._write_errors(step):
            return self._write(step, model, optimizer, state, recipe)

    def _write(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
               recipe: dict[str, Any]) -> Path:
        from torch.distributed.checkpoint.state_dict import (  # 2 s to import: only when saving
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)  # collective under FSDP
        osd = get_optimizer_state_dict(model, optimizer, options=options)
        final = self.dir / step_name(step)
        tmp = temp_sibling(final)
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt killed mid-write
            tmp.mkdir()
        _barrier()
        _save_tensors(rng_state(), tmp / f"rng-rank{self.rank:05d}.safetensors")
        if self.rank == 0:
            _save_tensors({k: v for k, v in weights.items() if k not in self.skip}, tmp / "model.safetensors")
            opt_tensors, opt_meta = flatten_optimizer(osd)
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            _write_json(tmp / "optimizer.json", opt_meta)
            _write_json(tmp / "recipe.json", recipe)
            doc = {**state, "step": step, "world_size": self.world_size}
            CheckpointState.model_validate(doc)  # the format is schemas.training's; the file holds the dict
            _write_json(tmp / STATE_NAME, doc)
        _barrier()
        if self.rank == 0:
            publish_dir(tmp, final)  # the same step saved again (a resumed run's final save) replaces it whole
            atomic_write_bytes(self.dir / LATEST, (final.name + "\n").encode())
        _barrier()
        return final

    # --- load ---
    def load(self, path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore weights, optimizer and this rank's RNG from `path`; return its state.json."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = self.read_state(path)
        if int(state["world_size"]) != self.world_size:
            raise CheckpointMismatch(
                f"checkpoint {path} was written by {state['world_size']} ranks, this run has {self.world_size}: "
                "resume with the same --nproc-per-node (and nodes), or start a new run with --out"
            )
        weights = load_file(str(path / "model.safetensors"))
        expected = set(get_model_state_dict(model).keys()) - self.skip
        missing, unexpected = expected - set(weights), set(weights) - expected
        if missing or unexpected:
            raise CheckpointMismatch(
                f"checkpoint {path} does not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        opt_meta = json.loads((path / "optimizer.json").read_text())
        osd = unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), opt_meta)
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
        rng_file = path / f"rng-rank{self.rank:05d}.safetensors"
        set_rng_state(load_file(str(rng_file)))
        return state
