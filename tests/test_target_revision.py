"""`target.revision` is honoured wherever a target is loaded, against a real offline Hugging Face cache.

The cache is laid out exactly as `huggingface_hub` writes it (`models--org--name/{blobs, snapshots/<sha>/,
refs/}`, snapshot files symlinked to content-addressed blobs) and holds TWO revisions of one tiny target that
differ observably: revision A (`refs/main`) is `tiny:random`; revision B (a commit sha, also tag `v2`) is
`tiny:trained` (same architecture and tokenizer, other weights) with another `max_position_embeddings`.
Every stage is run on the hub id with `HF_HUB_OFFLINE=1` and must load the revision it was asked for:
config and head reads, the transformers and vLLM capture backends (dump-hidden), serve-target's vLLM flags,
the trainer, export (the verifier revision is written into the export) and offline eval.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_capture_support import make_regen, random_sequences, rel_err, tiny_recipe

from dspark_data.capture import CaptureConfigError, EngineOptions, capture_all, dump_hidden, plan_layers
from dspark_data.capture.backend import engine_options
from dspark_data.capture.hf_backend import HfCapture
from dspark_data.store import open_hidden
from dspark_data.targets import load_target_info
from dspark_data.targets.weights import load_target_head

REPO_ID = "dspark-test/tiny-rev"
SHA_A = "a" * 8 + hashlib.sha1(b"revision A").hexdigest()[8:]
SHA_B = "b" * 8 + hashlib.sha1(b"revision B").hexdigest()[8:]
MAX_POS_B = 3072  # revision A (tiny:random) has 2048


def _add_snapshot(repo_dir: Path, commit: str, files: dict[str, bytes], refs: list[str]) -> None:
    """One commit as the hub client stores it: blobs by content hash, snapshot entries as relative symlinks."""
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)  # the hub writes the sha without a newline


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_random_target, tiny_trained_target) -> dict:
    """The offline cache with revisions A and B of REPO_ID, and local copies of both for references."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    repo_dir = cache / ("models--" + REPO_ID.replace("/", "--"))
    a = {p.name: p.read_bytes() for p in Path(tiny_random_target).iterdir() if p.is_file()}
    b = {p.name: p.read_bytes() for p in Path(tiny_trained_target).iterdir() if p.is_file()}
    cfg = json.loads(b["config.json"])
    assert cfg["max_position_embeddings"] != MAX_POS_B
    b["config.json"] = (json.dumps({**cfg, "max_position_embeddings": MAX_POS_B}, indent=2) + "\n").encode()
    _add_snapshot(repo_dir, SHA_A, a, ["main"])
    _add_snapshot(repo_dir, SHA_B, b, ["v2"])
    local_b = root / "local-b"
    local_b.mkdir()
    for name, data in b.items():
        (local_b / name).write_bytes(data)
    return {"cache": cache, "a": tiny_random_target, "b": str(local_b)}


@pytest.fixture()
def offline(hub, monkeypatch) -> dict:
    """Point this process (huggingface_hub and transformers read the constant at call time) and its children
    (vLLM's engine process reads the environment) at the cache."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub


def test_config_and_head_read_the_revision_asked_for(offline) -> None:
    a_pos = load_target_info(offline["a"]).max_position_embeddings
    assert load_target_info(REPO_ID).max_position_embeddings == a_pos  # no revision: refs/main
    assert load_target_info(REPO_ID, "main").max_position_embeddings == a_pos
    assert load_target_info(REPO_ID, SHA_B).max_position_embeddings == MAX_POS_B
    assert load_target_info(REPO_ID, "v2").max_position_embeddings == MAX_POS_B
    head_a, head_b = load_target_head(offline["a"]), load_target_head(offline["b"])
    assert not torch.equal(head_a.lm_head, head_b.lm_head)
    for revision, want in ((None, head_a), (SHA_A, head_a), (SHA_B, head_b), ("v2", head_b)):
        got = load_target_head(REPO_ID, revision=revision)
        assert torch.equal(got.lm_head, want.lm_head) and torch.equal(got.embed, want.embed), revision
        assert torch.equal(got.norm, want.norm), revision
    with pytest.raises(FileNotFoundError, match="revision 'no-such-rev'"):
        load_target_info(REPO_ID, "no-such-rev")


@pytest.fixture()
def regen(tmp_path) -> Path:
    make_regen(tmp_path / "regen", random_sequences(6, 2048, lo=20, hi=90, seed=3))
    return tmp_path / "regen"


def _plan(local: str):
    info = load_target_info(local)
    return plan_layers([1, 3, 5], True, info.num_hidden_layers, info.hidden_size)


def _stored(out: Path) -> dict[str, torch.Tensor]:
    ds = open_hidden(out, require_complete=True)
    return {ds.ids[i]: ds[i] for i in range(len(ds))}


def test_hf_capture_loads_the_revision_and_max_model_len_is_checked(offline, regen, tmp_path) -> None:
    """dump-hidden (transformers backend, fp32 engine) on the hub id at revision B stores B's states exactly
    (bit-equal once cast to the store's bf16)."""
    sets = ["capture.backend=hf", "target.dtype=float32", "seq_len=96"]
    too_short = tiny_recipe(REPO_ID, *sets, f"target.revision={SHA_B}", "target.max_model_len=64")
    with pytest.raises(CaptureConfigError, match=r"target.max_model_len=64 is below seq_len=96"):
        dump_hidden(too_short, regen, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    recipe = tiny_recipe(REPO_ID, *sets, f"target.revision={SHA_B}", "target.max_model_len=128")
    assert engine_options(recipe).max_model_len == 128 and engine_options(recipe).revision == SHA_B
    dump_hidden(recipe, regen, tmp_path / "b")
    stored = _stored(tmp_path / "b")
    ref_b = HfCapture(offline["b"], _plan(offline["b"]), EngineOptions(dtype="float32"))
    ref_a = HfCapture(offline["a"], _plan(offline["a"]), EngineOptions(dtype="float32"))
    for sample in stored.values():
        seq = sample.input_ids.tolist()
        want = capture_all(ref_b, [seq])[0].hidden.to(sample.hidden.dtype)  # the store keeps bf16
        assert torch.equal(sample.hidden, want)
        assert rel_err(sample.hidden, capture_all(ref_a, [seq])[0].hidden) > 0.1
    assert open_hidden(tmp_path / "b").manifest.fingerprint["target_revision"] == SHA_B


def test_serve_target_flags_carry_revision_and_max_model_len(offline, tmp_path) -> None:
    """serve-target derives `vllm serve` flags from the capture engine's settings: revision and length too."""
    from dspark_data.stream.launch import target_setup, vllm_command

    recipe = tiny_recipe(REPO_ID, f"target.revision={SHA_B}", "target.max_model_len=300", "seq_len=256")
    setup = target_setup(recipe)
    argv = vllm_command(setup, tmp_path / "spool", port=8199)
    assert argv[argv.index("--revision") + 1] == SHA_B
    assert argv[argv.index("--tokenizer-revision") + 1] == SHA_B
    assert argv[argv.index("--max-model-len") + 1] == "302"  # max_model_len + the sampled and speculative slot
    default = vllm_command(target_setup(tiny_recipe(REPO_ID, "seq_len=256")), tmp_path / "spool", port=8199)
    assert "--revision" not in default and default[default.index("--max-model-len") + 1] == "258"
    with pytest.raises(CaptureConfigError, match="target.max_model_len=200"):
        target_setup(tiny_recipe(REPO_ID, "target.max_model_len=200", "seq_len=256"))


def test_vllm_capture_loads_the_revision(offline, regen, tmp_path, monkeypatch) -> None:
    """One vLLM engine: dump-hidden on the hub id at revision B, fp32; the engine's own config says which
    revision and length it loaded, and the stored states are B's (within vLLM's fp32 kernel tolerance)."""
    import dspark_data.capture.dump as dump_module

    seen: dict = {}
    real_open = dump_module.open_backend

    def recording_open(name, model_path, plan, options):  # a spy: the real engine runs
        engine = real_open(name, model_path, plan, options)
        mc = engine.llm.llm_engine.model_config
        seen.update(model=mc.model, revision=mc.revision, max_model_len=mc.max_model_len)
        return engine

    monkeypatch.setattr(dump_module, "open_backend", recording_open)
    recipe = tiny_recipe(REPO_ID, "capture.backend=vllm", "target.dtype=float32", "seq_len=96",
                         f"target.revision={SHA_B}", "target.max_model_len=112", "capture.batch_size=4")
    dump_hidden(recipe, regen, tmp_path / "vllm-b")
    # vLLM resolved the hub id to revision B's snapshot of the offline cache
    assert seen["model"].endswith(f"models--dspark-test--tiny-rev/snapshots/{SHA_B}"), seen
    assert (seen["revision"], seen["max_model_len"]) == (SHA_B, 114)  # max_model_len + 2 (capture's slots)
    ref_b = HfCapture(offline["b"], _plan(offline["b"]), EngineOptions(dtype="float32"))
    ref_a = HfCapture(offline["a"], _plan(offline["a"]), EngineOptions(dtype="float32"))
    for sample in _stored(tmp_path / "vllm-b").values():
        seq = sample.input_ids.tolist()
        assert rel_err(sample.hidden, capture_all(ref_b, [seq])[0].hidden) < 1e-2  # stored bf16
        assert rel_err(sample.hidden, capture_all(ref_a, [seq])[0].hidden) > 0.1


def test_train_export_and_eval_follow_the_revision(offline, tmp_path) -> None:
    """Trainer head, export (verifier.revision + the verifier's lm_head rows) and eval's target: revision B."""
    from dspark_train.entrypoint import default_options, run
    from dspark_train.eval.offline import EvalOptions, run_offline_eval
    from dspark_train.export import export_draft, load_export
    from schemas.loading import load_recipe

    sets = ["seq_len=64", "model.num_layers=1", "vocab.draft_vocab_size=256", "train.batch_size=2",
            "train.grad_accum=1", "train.max_anchors=8", "train.val_fraction=0.25", "train.val_every=2",
            "train.save_every=2", "train.num_workers=0", "capture.aux_layers=[1,3,5]"]
    recipe = load_recipe("tiny", [f"target.model={REPO_ID}", f"target.revision={SHA_B}", *sets])
    run(recipe, default_options(recipe, out_dir=tmp_path / "train", synthetic=16, max_steps=2, progress=False,
                                device="cpu"))
    summary = export_draft(tmp_path / "train", tmp_path / "export", dtype="float32")
    assert summary["verifier"] == REPO_ID and summary["verifier_revision"] == SHA_B
    verifier = json.loads((tmp_path / "export" / "config.json").read_text())["speculators_config"]["verifier"]
    assert verifier == {"name_or_path": REPO_ID, "architectures": ["LlamaForCausalLM"], "revision": SHA_B}
    tensors = load_file(str(tmp_path / "export" / "model.safetensors"))
    head_b, head_a = load_target_head(offline["b"]), load_target_head(offline["a"])
    rows = tensors["t2d"].bool()
    assert torch.equal(tensors["lm_head.weight"], head_b.lm_head[rows].float())
    assert not torch.equal(tensors["lm_head.weight"], head_a.lm_head[rows].float())
    assert load_export(tmp_path / "export").verifier_revision == SHA_B

    common = dict(prompt_sets=["code"], modes=["greedy"], num_prompts=2, max_new_tokens=12, dtype="float32")
    by_revision = run_offline_eval(EvalOptions(draft_dir=tmp_path / "export", out_dir=tmp_path / "e1", **common))
    by_dir = run_offline_eval(EvalOptions(draft_dir=tmp_path / "export", out_dir=tmp_path / "e2",
                                          target=offline["b"], **common))
    results = [json.loads((tmp_path / e / "results.json").read_text()) for e in ("e1", "e2")]
    assert results[0] == results[1] and by_revision["code_greedy_avg_length"] == by_dir["code_greedy_avg_length"]
    shutil.rmtree(tmp_path / "train")
