"""A DSpark checkpoint saved by speculators 0.9.0's own model class, for the --init-from tests (no tests here).

speculators is not a dspark dependency (its requirements pull torchvision, torchaudio, hs-connectors...),
so the wheel is fetched from PyPI with `pip download --no-deps` into ~/.cache/dspark/test-wheels/ once and
put on sys.path of a child process only. The one module it imports that is not installed here,
`hs_connectors` (speculators' hidden-state transfer client for its own training data path), is given an
empty stand-in in that child: the model class never calls it. If the wheel cannot be fetched (no network),
`speculators_checkpoint` returns None and the test says so.

Run as a script (`python speculators_fixture.py SITE TARGET OUT LAYERS AUX RANK VOCAB|-`), it builds the draft
the way speculators' trainer does (`create_transformer_layer_config` + `DSparkDraftModel.from_training_args`)
and saves it with `save_pretrained`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "0.9.0"


def _wheel_dir() -> Path | None:
    root = Path(os.environ.get("DSPARK_CACHE", Path.home() / ".cache" / "dspark")) / "test-wheels"
    site = root / f"speculators-{VERSION}"
    if (site / "speculators" / "__init__.py").is_file():
        return site
    root.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", f"speculators=={VERSION}", "-d", str(root), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    wheels = sorted(root.glob(f"speculators-{VERSION}-*.whl"))
    if got.returncode != 0 or not wheels:
        return None
    tmp = root / f".tmp-speculators-{VERSION}"
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp)
    tmp.rename(site)
    return site


def speculators_checkpoint(target: str, out: Path, *, num_layers: int, aux: list[int], markov_rank: int,
                           vocab_file: Path | None) -> Path | None:
    """`out` holding speculators' own save of a fresh DSpark draft for `target`; None without the wheel."""
    site = _wheel_dir()
    if site is None:
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, str(site), target, str(out), str(num_layers), ",".join(map(str, aux)),
            str(markov_rank), str(vocab_file) if vocab_file else "-"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"speculators {VERSION} could not build its checkpoint:\n{done.stderr[-3000:]}")
    return out


def _build(target: str, out: str, num_layers: int, aux: list[int], markov_rank: int, vocab_file: str) -> None:
    import types

    sys.modules.setdefault("hs_connectors", types.ModuleType("hs_connectors"))

    def _stand_in(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    sys.modules["hs_connectors"].__getattr__ = _stand_in  # type: ignore[attr-defined]
    import torch

    torch.manual_seed(0)
    from speculators.models.dspark import DSparkDraftModel
    from speculators.train.cli import create_transformer_layer_config

    t2d = d2t = None
    if vocab_file != "-":
        from safetensors.torch import load_file

        vocab = load_file(vocab_file)
        t2d, d2t = vocab["t2d"].bool(), vocab["d2t"].long()
    layer_config = create_transformer_layer_config(
        target, num_layers=num_layers, draft_arch="qwen3", hidden_act=None, sliding_window=0,
        full_attention_indices=list(range(num_layers)),
    )
    vocab_size = int(d2t.numel()) if d2t is not None else int(layer_config.vocab_size)
    model = DSparkDraftModel.from_training_args(
        layer_config, t2d=t2d, d2t=d2t, verifier_name_or_path=target, draft_vocab_size=vocab_size,
        target_layer_ids=aux, block_size=8, sample_from_anchor=False, mask_token_id=8, markov_rank=markov_rank,
        draft_attn_impl="sdpa",
    )
    with torch.no_grad():  # trained-looking weights, so a load that silently kept our init would be caught
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)


if __name__ == "__main__":
    _, _site, tgt, dest, layers, aux_ids, rank, vf = sys.argv
    _build(tgt, dest, int(layers), [int(i) for i in aux_ids.split(",")], int(rank), vf)
