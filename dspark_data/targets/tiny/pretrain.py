"""Train `tiny:trained`: a few minutes of AdamW on chat-formatted stdlib conversations plus raw stdlib code.

Why train at all: a random target's near-uniform logits make acceptance rates, greedy parity and regen
outputs meaningless. After this short run the model answers prompts with the GLM layout
(`<think>...</think>\\nANSWER<|endoftext|>`), its greedy margins are large enough for transformers and
vLLM to agree, and a draft has real structure to learn.

Deterministic on a given machine type: fixed seeds, a fixed thread count (float reductions depend on
it), deterministic algorithms, and data order from a seeded generator. Run it through
`resolve_target("tiny:trained")`, which caches the result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from dspark_data.progress import Progress
from dspark_data.targets.tiny.stdlib_chats import conversations
from dspark_data.targets.tiny.stdlib_corpus import iter_stdlib_text, stdlib_functions

logger = logging.getLogger(__name__)


def _chunks(ids: list[int], size: int) -> torch.Tensor:
    n = len(ids) // size
    return torch.tensor(ids[: n * size], dtype=torch.long).view(n, size)


def build_training_sequences(tokenizer, params: dict[str, Any]) -> torch.Tensor:
    """(N, seq_len + 1) token windows: packed chat conversations and raw stdlib text, in `chat_fraction`."""
    window = params["seq_len"] + 1
    functions = stdlib_functions(max_items=params["num_conversations"])
    convs = conversations(functions, params["num_conversations"], params["seed"])
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    chat_ids = [i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids]
    chat = _chunks(chat_ids, window)
    n_raw = round(len(chat) * (1 - params["chat_fraction"]) / params["chat_fraction"])
    raw_ids: list[int] = []
    for text in iter_stdlib_text(params["corpus_bytes"]):
        raw_ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if len(raw_ids) >= n_raw * window:
            break
    raw = _chunks(raw_ids, window)[:n_raw]
    return torch.cat([chat, raw])


def _batches(data: torch.Tensor, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if step == steps:
                return
            yield data[order[start : start + batch_size]]
            step += 1


def _lr_at(step: int, params: dict[str, Any]) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr`."""
    lr, warm, total = params["lr"], params["warmup_steps"], params["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = params["min_lr_ratio"]
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def train_tiny(model, tokenizer, params: dict[str, Any], log_every: int = 20) -> dict[str, Any]:
    """Train `model` in place (float32); returns the loss curve and throughput for build.json."""
    bar = Progress("building tiny:trained (once, then cached)", params["steps"])  # minutes: show it is alive
    data = build_training_sequences(tokenizer, params)
    torch.manual_seed(params["seed"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": params["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=params["lr"],
        betas=(0.9, 0.95),
    )
    curve: list[list[float]] = []
    window: list[float] = []
    start = time.monotonic()
    model.train()
    with _deterministic(params["threads"]), bar:
        for step, batch in enumerate(_batches(data, params["batch_size"], params["steps"], params["seed"])):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, params)
            logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            window.append(loss.item())  # host sync once per step; fine on CPU
            bar.update(advance=1, info=f"loss {window[-1]:.3f}")
            if step == 0 or (step + 1) % log_every == 0 or step + 1 == params["steps"]:
                curve.append([step + 1, round(sum(window) / len(window), 4)])
                logger.info(
                    "tiny:trained step %d/%d loss %.3f (%.0fs)",
                    step + 1,
                    params["steps"],
                    curve[-1][1],
                    time.monotonic() - start,
                )
                window = []
    model.eval()
    seconds = time.monotonic() - start
    tokens = params["steps"] * params["batch_size"] * params["seq_len"]
    return {
        "loss_start": curve[0][1],
        "loss_end": curve[-1][1],
        "loss_curve": curve,
        "sequences": len(data),
        "tokens_seen": tokens,
        "tokens_per_second": round(tokens / seconds),
    }
