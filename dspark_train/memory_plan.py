"""Per-GPU memory plan of one training step, before the first step runs (`dspark train --dry-run`).

How the plan is made, and why this way: the activation memory of the DSpark step depends on details a
closed formula gets wrong (which tensors autograd keeps, fp32 up-casts in RMSNorm/RoPE/logits, the
no-grad target-probability chunks, the loss over (A, P, D) logits). So the planner *runs the real step*
-- the same `DSparkDraft.forward`, `slot_targets`, `DSparkLoss`, backward and AdamW step the trainer
calls -- on fake tensors (`FakeTensorMode`: meta-device storage, shapes and dtypes only, no allocation),
and counts bytes as a caching-free allocator would: every op output's storage is live from its creation
until its last reference dies. The peak of that count is the step's peak. Tensors autograd saves for
backward are attributed to the module that saved them (attention, MLP, ...), which gives the per-sample
activation breakdown.

Parameters, gradients and Adam moments are then re-costed per strategy: DDP keeps all of them on every
GPU (plus DDP's gradient buckets, a second copy of the gradients); FSDP2 (`train.fsdp`, one
`fully_shard` per decoder layer, parallelize.py) keeps 1/N of each plus the unsharded working set (the
root's own parameters and two decoder layers: the one computing and the one prefetched). Frozen target
tensors are buffers and are replicated under both.

GPU plans use bf16 autocast and a flash-style attention (what flex attention keeps: q, k, v, output and
log-sum-exp; no dense mask); CPU plans use what the CPU step runs (fp32, SDPA with the dense boolean mask)
and are what the test compares against a measured CPU step (tests/test_memory_plan.py).
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dspark_train.losses import DSparkLoss, slot_targets
from dspark_train.model import draft as draft_module
from dspark_train.model.config import DraftConfig
from dspark_train.model.draft import DSparkDraft

# CUDA context, NCCL buffers and allocator fragmentation: what `--gpu-memory` loses before the step's
# tensors (measured on H100/H200 nodes it is 2-4 GB; we keep 5% of the device, at least 3 GB).
RESERVE_FRACTION = 0.05
RESERVE_MIN_BYTES = 3 * 10**9
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """'141GB' / '288 GB' / '80GiB' / '1.5e9' -> bytes (GB = 10^9, GiB = 2^30, as vendors and nvidia-smi say)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"--gpu-memory {text!r}: expected a size like 141GB, 288GB or 80GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def fmt_bytes(n: float) -> str:
    """Bytes in GB (decimal, as GPU memory is sold) with two decimals; small sizes in MB."""
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- counting live bytes
class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live storages (each counted once, freed when its last tensor dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.grads = 0  # live gradient bytes (param.grad storages), see `grad_ready`
        self.peak_without_grads = 0
        self._refs: dict[int, weakref.ref] = {}
        self._grad_keys: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._refs and self._refs[key]() is st:
            return
        nbytes = st.nbytes()

        def freed(_ref: weakref.ref, key: int = key, nbytes: int = nbytes) -> None:
            if self._refs.get(key) is _ref:
                del self._refs[key]
                self.live -= nbytes
                if key in self._grad_keys:
                    self._grad_keys.discard(key)
                    self.grads -= nbytes

        self._refs[key] = weakref.ref(st, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self.peak_without_grads = max(self.peak_without_grads, self.live - self.grads)

    def grad_ready(self, param: torch.Tensor) -> None:
        """Post-accumulate-grad hook: from now on `param.grad`'s storage counts as gradient, not activation."""
        st = param.grad.untyped_storage()
        if id(st) in self._refs and id(st) not in self._grad_keys:
            self._grad_keys.add(id(st))
            self.grads += st.nbytes()

    def track_all(self, tensors: Any) -> None:
        """Count tensors made before the mode was entered (model, optimizer state, inputs)."""
        for t in _tensors(tensors):
            self._track(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            self._track(t)
        return out

    def reset_peak(self) -> None:
        self.peak = self.live


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class SavedByComponent:
    """Bytes of tensors autograd saves for backward, by the draft component that saved them."""

    def __init__(self, model: DSparkDraft) -> None:
        self.stack: list[str] = []
        self.bytes: dict[str, int] = {}
        self._seen: dict[int, weakref.ref] = {}  # weak: counting must not keep a saved tensor alive
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._push(name)))
                self._handles.append(module.register_forward_hook(self._pop))

    def _push(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append(name)
        return hook

    def _pop(self, module: nn.Module, args: Any, out: Any) -> None:
        self.stack.pop()

    def component(self) -> str:
        names = " ".join(self.stack)
        if ".self_attn" in names:
            return "attention"
        if ".mlp" in names:
            return "mlp"
        if "layers." in names:
            return "norms + residual"
        if names.startswith(("fc", "hidden_norm")):
            return "context fc"
        return "embed + rope + logits + heads"

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ref = self._seen.get(id(st))
        if ref is None or ref() is not st:
            self._seen[id(st)] = weakref.ref(st)
            name = self.component()
            self.bytes[name] = self.bytes.get(name, 0) + st.nbytes()
        return t

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------------------- the traced step
@dataclass(frozen=True)
class StepShape:
    """One micro-batch as the planner sizes it: every sample `seq_len` long with `anchors` anchors."""

    batch_size: int
    seq_len: int
    anchors: int


@dataclass
class StepTrace:
    """What one traced training step holds: totals in bytes."""

    params: int  # trainable parameters (fp32 masters)
    optimizer: int  # AdamW moments (+ step counters)
    frozen: int  # buffers: target embedding, lm_head rows, t2d/d2t, RoPE, the loss's target head
    inputs: int  # the micro-batch on the device
    peak: int  # peak live bytes during the step (everything above included, plus grads and activations)
    peak_without_grads: int  # peak of live bytes not counting gradients (they are re-costed per strategy)
    saved: dict[str, int]  # bytes saved for backward, by component
    target_probs_peak: int  # peak live bytes added while computing the target probabilities (no grad)
    loss_peak: int  # peak live bytes added by the loss forward (over the draft-vocab logits)

    @property
    def activations(self) -> int:
        """Peak bytes beyond parameters, optimizer state, frozen tensors, inputs and gradients."""
        return self.peak_without_grads - self.params - self.optimizer - self.frozen - self.inputs


@contextlib.contextmanager
def _flash_style_attention() -> Iterator[None]:
    """GPU plans: stand in for flex attention (compiled, cannot run on fake tensors) with a mask-free SDPA.

    Flex keeps q, k, v, the output and the log-sum-exp for backward and never materialises the mask or
    the scores; CPU SDPA without a mask keeps exactly those, so the bytes match (values do not matter).
    """
    original = draft_module.flex_attend

    def attend_like_flex(anchors: torch.Tensor, context_len: int, block_size: int, **_: Any):  # noqa: ANN202
        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
        return attend

    draft_module.flex_attend = attend_like_flex
    try:
        yield
    finally:
        draft_module.flex_attend = original


def _target_probs_like(last_hidden: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float,
                       draft_index: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Same tensors, sizes and chunking as `target_probs_and_greedy` (weights.py); `index_select` stands
    in for the boolean-mask column pick, which fake tensors cannot size (same output bytes)."""
    flat = last_hidden.reshape(-1, last_hidden.shape[-1])
    probs_out, greedy_out = [], []
    for start in range(0, flat.shape[0], chunk):
        x = flat[start : start + chunk].float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.float()
        probs = torch.softmax(torch.nn.functional.linear(x.to(lm_head.dtype), lm_head).float(), dim=-1)
        greedy_out.append(probs.argmax(dim=-1))
        probs_out.append(probs.index_select(1, draft_index))
    return torch.cat(probs_out).view(*last_hidden.shape[:-1], -1), torch.cat(greedy_out).view(last_hidden.shape[:-1])


def trace_step(config: DraftConfig, shape: StepShape, *, loss: DSparkLoss, gpu: bool,
               frozen_dtype: torch.dtype, hidden_dtype: torch.dtype = torch.bfloat16) -> StepTrace:
    """Run one training step (the second: AdamW state exists) on fake tensors and count its bytes.

    `gpu=True`: bf16 autocast and flash-style attention (what the trainer does on CUDA); `gpu=False`: the
    CPU step (fp32, SDPA with the dense mask). `frozen_dtype`: the target tensors' dtype on the device
    (the checkpoint's on GPU, fp32 on CPU; inputs.load_head).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    c = config
    b, t, a = shape.batch_size, shape.seq_len, shape.anchors
    attention = _flash_style_attention() if gpu else contextlib.nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), attention:
        with torch.no_grad():
            model = _fake_draft(c, frozen_dtype)
            head = (torch.empty(c.target_vocab_size, c.hidden_size, dtype=frozen_dtype),  # loss's lm_head
                    torch.ones(c.hidden_size, dtype=frozen_dtype),  # final norm
                    torch.arange(c.draft_vocab_size))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = {
            "context_hidden": torch.empty(b, t, c.fc_in_features, dtype=hidden_dtype),
            "target_hidden": torch.empty(b, t, c.target_hidden_size, dtype=hidden_dtype),
            "input_ids": torch.zeros(b, t, dtype=torch.long),
            "loss_mask": torch.ones(b, t, dtype=torch.bool),
            "anchors": torch.zeros(b, a, dtype=torch.long),
            "anchor_valid": torch.ones(b, a, dtype=torch.bool),
        }
        step = _StepRunner(model, opt, loss, head, c.rms_norm_eps, gpu=gpu)
        _init_optimizer_state(opt)  # the step planned is a steady-state one: AdamW moments exist
        params = _nbytes(model.parameters())
        opt_bytes = _nbytes(x for s in opt.state.values() for x in _tensors(s))
        frozen = _nbytes(list(model.buffers()) + list(head[:2]))
        inputs = _nbytes(batch.values())
        counter = LiveBytes()
        counter.track_all(list(model.parameters()) + list(model.buffers()) + list(head[:2]) + list(batch.values()))
        counter.track_all(list(opt.state.values()))
        saved = SavedByComponent(model)
        hooks = [p.register_post_accumulate_grad_hook(counter.grad_ready) for p in model.parameters()
                 if p.requires_grad]
        try:
            with counter:
                step(batch, (counter, saved))
        finally:
            saved.close()
            for h in hooks:
                h.remove()
    return StepTrace(params=params, optimizer=opt_bytes, frozen=frozen, inputs=inputs, peak=counter.peak,
                     peak_without_grads=counter.peak_without_grads,
                     saved=dict(saved.bytes), target_probs_peak=step.phase_peaks["target_probs"],
                     loss_peak=step.phase_peaks["loss"])


def _init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Create AdamW's moments without a forward: one step on zero gradients (fake tensors: no values)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _nbytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for x in tensors:
        st = x.untyped_storage()
        seen[id(st)] = st.nbytes()
    return sum(seen.values())


def _fake_draft(c: DraftConfig, frozen_dtype: torch.dtype) -> DSparkDraft:
    """The draft built under fake mode: its own __init__ with the target-weight install skipped (that
    step counts t2d entries, a data-dependent size fake tensors cannot answer), buffers sized as it sets them."""
    original = DSparkDraft.set_target_weights
    DSparkDraft.set_target_weights = lambda self, *args: None  # type: ignore[method-assign]
    try:
        model = DSparkDraft(c)
    finally:
        DSparkDraft.set_target_weights = original  # type: ignore[method-assign]
    model.embed_tokens = torch.empty(c.target_vocab_size, c.hidden_size, dtype=frozen_dtype)
    model.lm_head_weight = torch.empty(c.draft_vocab_size, c.hidden_size, dtype=frozen_dtype)
    return model


@dataclass
class _StepRunner:
    """One step as Trainer.train_step runs it: forward, no-grad targets, loss, backward, clip, AdamW."""

    model: DSparkDraft
    optimizer: torch.optim.Optimizer
    loss_fn: DSparkLoss
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    eps: float
    gpu: bool
    phase_peaks: dict[str, int] = field(default_factory=dict)

    def __call__(self, batch: dict[str, torch.Tensor], track: tuple[LiveBytes, SavedByComponent] | None) -> None:
        counter, saved = track if track else (None, None)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.gpu else contextlib.nullcontext()
        hooks = (torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda x: x) if saved
                 else contextlib.nullcontext())
        with hooks, autocast:
            out = self.model(batch["context_hidden"], batch["input_ids"], batch["anchors"], batch["anchor_valid"],
                             attention="flex" if self.gpu else "sdpa")
        with self._phase("target_probs", counter), torch.no_grad():
            probs, greedy = _target_probs_like(batch["target_hidden"], self.head[1], self.head[0], self.eps,
                                               self.head[2])
        with self._phase("loss", counter), hooks:
            targets = slot_targets(out, batch["input_ids"], batch["loss_mask"], probs, self.model.t2d, greedy)
            losses = self.loss_fn(out.logits, targets, out.confidence_logits)
        del out, probs, greedy, targets
        losses["loss"].backward()
        del losses
        params = [p for p in self.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def _phase(self, name: str, counter: LiveBytes | None) -> Iterator[None]:
        if counter is None:
            yield
            return
        before, outer_peak = counter.live, counter.peak
        counter.reset_peak()
        yield
        self.phase_peaks[name] = counter.peak - before
        counter.peak = max(counter.peak, outer_peak)


# ---------------------------------------------------------------------------- per strategy, per GPU
@dataclass
class StrategyBytes:
    """Resident bytes per GPU for one parallelism strategy."""

    name: str
    params: int
    grads: int
    optimizer: int
    frozen: int

    @property
    def resident(self) -> int:
        return self.params + self.grads + self.optimizer + self.frozen


def strategy_bytes(model_params: dict[str, int], trace: StepTrace, world_size: int, fsdp: bool) -> StrategyBytes:
    """Params/grads/optimizer per GPU; `model_params` = fp32 bytes of the root's own params and of one layer."""
    p, o = trace.params, trace.optimizer
    if not fsdp:  # DDP: full replicas + the gradient buckets (gradient_as_bucket_view=False: a second copy)
        grads = p * (2 if world_size > 1 else 1)
        return StrategyBytes("DDP" if world_size > 1 else "1 GPU", p, grads, o, trace.frozen)
    n = world_size
    working = model_params["root"] + 2 * model_params["layer"]  # unsharded root + computing/prefetched layers
    return StrategyBytes("FSDP2", math.ceil(p / n) + working, math.ceil(p / n) + model_params["layer"],
                         math.ceil(o / n), trace.frozen)


def _param_split(config: DraftConfig) -> dict[str, int]:
    """fp32 bytes of one decoder layer and of the root's own parameters (everything outside layers)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        model = _fake_draft(config, torch.bfloat16)
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        layer = sum(p.numel() for p in model.layers[0].parameters()) if config.num_layers else 0
    return {"layer": layer * 4, "root": (total - config.num_layers * layer) * 4}


# ---------------------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    config: DraftConfig
    shape: StepShape
    world_size: int
    gpu: bool
    trace: StepTrace
    per_sample: dict[str, int]  # activation bytes per sample, by component
    strategies: list[StrategyBytes]
    peaks: dict[str, int]  # strategy name -> planned peak per GPU
    gpu_memory: int | None = None
    usable: int | None = None
    fits: dict[str, bool] = field(default_factory=dict)
    max_batch: dict[str, int] = field(default_factory=dict)
    max_anchors: dict[str, int] = field(default_factory=dict)


def _peak(trace: StepTrace, strat: StrategyBytes) -> int:
    """Resident state of the strategy (gradients counted whole: with grad_accum > 1 they live through the
    forward too) + inputs + the step's activation peak."""
    return strat.resident + trace.inputs + trace.activations


def usable_bytes(gpu_memory: int) -> int:
    return gpu_memory - max(RESERVE_MIN_BYTES, int(RESERVE_FRACTION * gpu_memory))


def make_plan(config: DraftConfig, shape: StepShape, *, loss: DSparkLoss, world_size: int, gpu: bool = True,
              frozen_dtype: torch.dtype = torch.bfloat16, gpu_memory: int | None = None) -> MemoryPlan:
    """Trace the step at `shape`, cost DDP and FSDP2 for `world_size` GPUs, and (with `gpu_memory`) search
    the largest micro-batch and anchor count that fit."""
    trace = trace_step(config, shape, loss=loss, gpu=gpu, frozen_dtype=frozen_dtype)
    split = _param_split(config)
    strategies = [strategy_bytes(split, trace, world_size, fsdp=False)]
    if world_size > 1:
        strategies.append(strategy_bytes(split, trace, world_size, fsdp=True))
    per_sample = {k: v // shape.batch_size for k, v in trace.saved.items()}
    per_sample["target probs (no grad, peak)"] = trace.target_probs_peak // shape.batch_size
    plan = MemoryPlan(config, shape, world_size, gpu, trace, per_sample, strategies,
                      {s.name: _peak(trace, s) for s in strategies}, gpu_memory)
    if gpu_memory is not None:
        plan.usable = usable_bytes(gpu_memory)
        for s in strategies:
            plan.fits[s.name] = plan.peaks[s.name] <= plan.usable
        _search_limits(plan, loss, frozen_dtype, split)
    return plan


def _search_limits(plan: MemoryPlan, loss: DSparkLoss, frozen_dtype: torch.dtype, split: dict[str, int]) -> None:
    """Largest micro-batch (at the planned anchors) and largest anchor count (at batch 1) under `plan.usable`.

    Every sample adds the same tensors, so the activation peak is affine in the batch: traces at batch 1
    and 2 give it. In the anchor count it is at most quadratic (the CPU's dense mask is A*S x (T+A*S);
    everything else is linear), so three traces give the curve; the solution is then checked with one
    more trace and stepped down until it fits.
    """
    assert plan.usable is not None
    usable, shape = plan.usable, plan.shape
    cache: dict[tuple[int, int], int] = {}

    def act(batch: int, anchors: int) -> int:
        if (batch, anchors) not in cache:
            tr = trace_step(plan.config, StepShape(batch, shape.seq_len, anchors), loss=loss, gpu=plan.gpu,
                            frozen_dtype=frozen_dtype)
            cache[(batch, anchors)] = tr.activations + tr.inputs
        return cache[(batch, anchors)]

    if shape.batch_size in (1, 2):
        cache[(shape.batch_size, shape.anchors)] = plan.trace.activations + plan.trace.inputs
    per_sample = max(1, act(2, shape.anchors) - act(1, shape.anchors))
    fixed = act(1, shape.anchors) - per_sample
    xs = [max(1, shape.anchors // 2), shape.anchors, 2 * shape.anchors]
    coef = _quadratic([float(x) for x in xs], [float(act(1, x)) for x in xs])
    for st in plan.strategies:
        room = usable - st.resident
        plan.max_batch[st.name] = max(0, (room - fixed) // per_sample)
        guess = min(shape.seq_len, _solve_quadratic(coef, room))
        while guess > 0 and act(1, guess) > room:
            guess = int(guess * 0.97)
        plan.max_anchors[st.name] = max(0, guess)


def _quadratic(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(c0, c1, c2) of the parabola through three points (Lagrange form, expanded)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d0, d1, d2 = (x0 - x1) * (x0 - x2), (x1 - x0) * (x1 - x2), (x2 - x0) * (x2 - x1)
    c2 = y0 / d0 + y1 / d1 + y2 / d2
    c1 = -(y0 * (x1 + x2) / d0 + y1 * (x0 + x2) / d1 + y2 * (x0 + x1) / d2)
    c0 = y0 * x1 * x2 / d0 + y1 * x0 * x2 / d1 + y2 * x0 * x1 / d2
    return c0, c1, c2


def _solve_quadratic(coef: tuple[float, float, float], room: float) -> int:
    """Largest integer x >= 0 with c0 + c1 x + c2 x^2 <= room (0 if none)."""
    c0, c1, c2 = coef
    if c0 > room:
        return 0
    if abs(c2) < 1e-9 * max(1.0, abs(c1)):
        return int((room - c0) / c1) if c1 > 0 else 10**9
    disc = c1 * c1 - 4 * c2 * (c0 - room)
    if c2 < 0 and disc < 0:
        return 10**9
    return max(0, int((-c1 + math.sqrt(max(0.0, disc))) / (2 * c2)))


def format_plan(plan: MemoryPlan, title: str) -> str:
    """The dry-run report: a plain-text table (copied verbatim into the runbook)."""
    c, s, tr = plan.config, plan.shape, plan.trace
    lines = [
        f"memory plan: {title}",
        f"  draft: hidden {c.hidden_size}, {c.num_layers} layers, draft vocab {c.draft_vocab_size:,}, target vocab "
        f"{c.target_vocab_size:,}; step: micro-batch {s.batch_size} x seq_len {s.seq_len:,}, {s.anchors:,} anchors "
        f"x block {c.block_size}; {'GPU (bf16 autocast, flex attention)' if plan.gpu else 'CPU (fp32, SDPA mask)'}",
        "",
        f"  activations per sample (saved for backward){'':8s}bytes",
    ]
    for name, value in sorted(plan.per_sample.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<44s}{fmt_bytes(value):>12s}")
    lines.append(f"    {'loss over draft-vocab logits (peak)':<44s}{fmt_bytes(tr.loss_peak // s.batch_size):>12s}")
    strats = plan.strategies

    def row(label: str, cells: list[str]) -> str:
        return f"    {label:<40s}" + "".join(f"{c:>14s}" for c in cells)

    lines += ["", row(f"per GPU, {plan.world_size} GPU(s)", [st.name for st in strats])]
    for label, attr in (("parameters (fp32)", "params"), ("gradients (fp32)", "grads"),
                        ("AdamW state", "optimizer"), ("frozen target tensors", "frozen")):
        lines.append(row(label, [fmt_bytes(getattr(st, attr)) for st in strats]))
    lines.append(row("micro-batch inputs", [fmt_bytes(tr.inputs)] * len(strats)))
    lines.append(row("activations + transients (peak)", [fmt_bytes(tr.activations)] * len(strats)))
    lines.append(row("planned peak", [fmt_bytes(plan.peaks[st.name]) for st in strats]))
    if plan.gpu_memory is not None:
        lines.append(row(f"fits in {fmt_bytes(plan.usable or 0)} usable of {fmt_bytes(plan.gpu_memory)}",
                         ["yes" if plan.fits[st.name] else "NO" for st in strats]))
        lines.append(row(f"largest micro-batch ({s.anchors} anchors)", [str(plan.max_batch[st.name]) for st in strats]))
        lines.append(row("largest anchors (batch 1, <= seq_len)", [str(plan.max_anchors[st.name]) for st in strats]))
    return "\n".join(lines)


def plan_for_recipe(recipe: Any, *, world_size: int, gpu_memory: int | None) -> tuple[MemoryPlan, str]:
    """The plan for a recipe's real sizes: the target's config.json (no weights) sizes the draft; the
    micro-batch is `train.batch_size` samples of `seq_len` tokens with `train.max_anchors` anchors each."""
    from dspark_data.targets.info import load_target_info

    info = load_target_info(recipe.target.model)
    config = DraftConfig.from_recipe(recipe, info)
    dtype = getattr(torch, str(info.dtype or "bfloat16").replace("torch.", ""), torch.bfloat16)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.itemsize == 1:
        dtype = torch.bfloat16  # FP8 checkpoints keep embedding and lm_head in bf16
    shape = StepShape(recipe.train.batch_size, recipe.seq_len, recipe.train.max_anchors)
    plan = make_plan(config, shape, loss=DSparkLoss.from_config(recipe.loss), world_size=world_size, gpu=True,
                     frozen_dtype=dtype, gpu_memory=gpu_memory)
    return plan, f"recipe {recipe.name} (target {recipe.target.model}), {world_size} GPU(s)"
