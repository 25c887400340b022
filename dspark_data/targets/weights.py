"""The three target tensors a DSpark draft needs, read without loading the model, and target probabilities.

The draft embeds its block with the target's (frozen) embedding, scores with the target's lm_head rows
of the draft vocab, and learns from the target's next-token distribution, which we recompute from the
stored last-layer hidden state (layer id N, *before* the final norm) as softmax(lm_head @ norm(h)).
`load_target_head` opens only the safetensors shards that hold those tensors (found through
`model.safetensors.index.json`), so a 700 GB target costs a few GB of reads.

Draft-vocab restriction (`draft_vocab_probs`): the softmax runs over the *full* target vocab and the draft
columns are then selected through t2d, without renormalising. The missing mass `1 - sum(p)` is what the
target puts on tokens the draft can never propose; keeping it out makes `1 - TV(q, p) = sum min(q, p)` the
exact acceptance probability of rejection sampling in target space (the draft has zero mass outside its
vocab, so those tokens contribute min(q, p) = 0). Renormalising would overstate acceptance. Losses that
need a proper distribution (KL) renormalise themselves (dspark_train/losses.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# (embedding, final norm, lm_head) names by family. Llama, Qwen3, DeepSeek-V3 and GLM-5 (glm_moe_dsa) use
# the first; multimodal wrappers nest the language model; ChatGLM-style checkpoints use `transformer.*`.
_NAME_SETS: tuple[tuple[str, str, str], ...] = (
    ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
    ("model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight"),
    ("language_model.model.embed_tokens.weight", "language_model.model.norm.weight", "language_model.lm_head.weight"),
    (
        "transformer.embedding.word_embeddings.weight",
        "transformer.encoder.final_layernorm.weight",
        "transformer.output_layer.weight",
    ),
)


@dataclass
class TargetHead:
    """Frozen target tensors. embed/lm_head: (V, H); norm: (H,). lm_head is embed when tied."""

    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    rms_norm_eps: float
    tied: bool = False

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.lm_head.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TargetHead:
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype)

        embed = move(self.embed)
        lm_head = embed if self.tied else move(self.lm_head)
        return TargetHead(embed, move(self.norm), lm_head, self.rms_norm_eps, self.tied)


def _target_dir(path_or_id: str | Path, revision: str | None) -> tuple[Path, str | None]:
    """(local directory, hub repo id or None): tiny specs and directories are local; hub ids use the cache
    (the snapshot of `revision`)."""
    from dspark_data.targets.resolve import resolve_target, target_config_path

    spec = str(path_or_id)
    local = Path(resolve_target(spec)).expanduser()
    if local.is_dir():
        return local, None
    return target_config_path(spec, revision).parent, spec


def _file(directory: Path, repo: str | None, name: str, revision: str | None = None) -> Path:
    """A checkpoint file, from the directory or (hub ids) fetched into the HF cache one file at a time.

    A file the repo does not have (or, offline, that the cache does not hold) comes back as a path that does
    not exist, so optional files (the shard index of a one-file checkpoint) are probed like local ones.
    """
    path = directory / name
    if path.is_file() or repo is None:
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo, name, revision=revision))
    except EntryNotFoundError:
        return path


def _weight_map(directory: Path, repo: str | None, revision: str | None) -> dict[str, str]:
    """Tensor name -> shard file name, from the index, or from the single `model.safetensors`."""
    index = _file(directory, repo, "model.safetensors.index.json", revision)
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = _file(directory, repo, "model.safetensors", revision)
    if not single.is_file():
        raise FileNotFoundError(f"{directory} has neither model.safetensors.index.json nor model.safetensors")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as fh:
        return {k: "model.safetensors" for k in fh.keys()}


def _read(
    directory: Path, repo: str | None, revision: str | None, weight_map: dict[str, str], name: str
) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(_file(directory, repo, weight_map[name], revision)), framework="pt") as fh:
        tensor = fh.get_tensor(name)
    if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"{name} is stored in {tensor.dtype}; dspark expects the target's head unquantised")
    return tensor


def _config(directory: Path, repo: str | None, revision: str | None) -> dict:
    cfg = json.loads(_file(directory, repo, "config.json", revision).read_text())
    if "text_config" in cfg and "rms_norm_eps" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings")}
    return cfg


def load_target_head(path: str | Path, dtype: torch.dtype | None = None, revision: str | None = None) -> TargetHead:
    """Embedding, final norm and lm_head of a target (local dir, `tiny:` spec, or hub id in the HF cache at
    `revision`, the recipe's `target.revision`).

    Tied embeddings (`tie_word_embeddings`, or no lm_head tensor in the checkpoint) reuse the embedding
    as lm_head. `dtype` casts (default: as stored).
    """
    directory, repo = _target_dir(path, revision)
    cfg = _config(directory, repo, revision)
    weight_map = _weight_map(directory, repo, revision)
    names = next((n for n in _NAME_SETS if n[0] in weight_map and n[1] in weight_map), None)
    if names is None:
        raise KeyError(
            f"{directory}: no known embedding/final-norm tensor names (tried {[n[:2] for n in _NAME_SETS]}); "
            "add this family's names to dspark_data/targets/weights.py"
        )
    embed_name, norm_name, head_name = names
    embed = _read(directory, repo, revision, weight_map, embed_name)
    norm = _read(directory, repo, revision, weight_map, norm_name)
    tied = bool(cfg.get("tie_word_embeddings")) or head_name not in weight_map
    lm_head = embed if tied else _read(directory, repo, revision, weight_map, head_name)
    eps = float(cfg.get("rms_norm_eps", cfg.get("layernorm_epsilon", cfg.get("layer_norm_epsilon", 1e-6))))
    if lm_head.shape[1] != norm.shape[0] or embed.shape[1] != norm.shape[0]:
        raise ValueError(f"inconsistent head shapes: embed {embed.shape}, norm {norm.shape}, lm_head {lm_head.shape}")
    head = TargetHead(embed=embed, norm=norm, lm_head=lm_head, rms_norm_eps=eps, tied=tied)
    return head.to(dtype=dtype) if dtype is not None else head


def target_logits(last_hidden: torch.Tensor, head: TargetHead) -> torch.Tensor:
    """(..., H) last-layer hidden (before the final norm) -> (..., V) float32 target logits."""
    x = last_hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + head.rms_norm_eps)
    x = (head.norm.float() * x.to(last_hidden.dtype).float()).to(head.lm_head.dtype)
    return torch.nn.functional.linear(x, head.lm_head).float()


def draft_vocab_probs_and_greedy(
    last_hidden: torch.Tensor,
    head: TargetHead,
    t2d: torch.Tensor | None = None,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs over the draft vocab (..., D) float32, greedy draft id (...) int64 or -1).

    probs = softmax over the full target vocab, then the t2d columns (no renormalisation; see the module
    docstring). greedy = the target's full-vocab argmax mapped to its draft id, -1 when that token is
    outside the draft vocab (a greedy draft can then never match). Rows are processed `chunk` at a time to
    bound the (chunk, V) float32 logits buffer.
    """
    lead = last_hidden.shape[:-1]
    flat = last_hidden.reshape(-1, last_hidden.shape[-1])  # (N, H)
    v = head.vocab_size
    if t2d is None:
        t2d = torch.ones(v, dtype=torch.bool, device=flat.device)
    t2d = t2d.to(device=flat.device, dtype=torch.bool)
    draft_ids = torch.cumsum(t2d.long(), 0) - 1  # target id -> draft id where t2d
    draft_ids = torch.where(t2d, draft_ids, torch.full_like(draft_ids, -1))  # (V,)
    probs_out, greedy_out = [], []
    for start in range(0, flat.shape[0], chunk):
        probs = torch.softmax(target_logits(flat[start : start + chunk], head), dim=-1)  # (n, V)
        greedy_out.append(draft_ids[probs.argmax(dim=-1)])
        probs_out.append(probs[:, t2d])  # (n, D)
    d = int(t2d.sum())
    probs = torch.cat(probs_out) if probs_out else flat.new_zeros(0, d, dtype=torch.float32)
    greedy = torch.cat(greedy_out) if greedy_out else torch.zeros(0, dtype=torch.long, device=flat.device)
    return probs.view(*lead, d), greedy.view(lead)


def draft_vocab_probs(last_hidden: torch.Tensor, head: TargetHead, t2d: torch.Tensor | None = None) -> torch.Tensor:
    """(..., H) -> (..., D): the target's next-token probabilities restricted (not renormalised) to t2d."""
    return draft_vocab_probs_and_greedy(last_hidden, head, t2d)[0]
