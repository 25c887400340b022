"""Promises (issue #8, docs/architecture.md): nothing unpickles data; paths from manifests and pointer files
cannot escape their directory (`../x`, absolute paths, symbolic links pointing out); a checksum mismatch
is never silently accepted; the streaming gateway binds 127.0.0.1 by default and, given a token, checks it.

- A static scan (AST) of every package source for pickle and its cousins, `torch.load` without
  `weights_only=True`, `numpy.load(allow_pickle=True)`, `eval`/`exec`, unsafe `yaml` loaders and
  `trust_remote_code=True`; the scanner is itself tested on snippets that must be caught.
- Pickle bombs (a `__reduce__` that creates a marker file) placed where a shard, an index, a checkpoint,
  a draft vocab, target weights or a streamed record is expected: refused, and the marker never appears.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from dspark_data.engine.server import free_port
from dspark_data.store import HiddenStateWriter, StoreError, load_manifest, open_dataset, open_hidden, verify
from reliability import harness
from reliability.data import write_hidden, write_vocab_manifest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["cli", "dspark_data", "dspark_train", "schemas", "bench"]

# ---------------------------------------------------------------- static scan

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: `torch.load`, `np.load`, `eval`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(text: str, where: str) -> list[str]:
    """Every unsafe deserialisation / code-execution construct in one module's source."""
    found: list[str] = []
    for node in ast.walk(ast.parse(text)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in {"eval", "exec", "builtins.eval", "builtins.exec"}:
                found.append(f"{line}: {name}()")
            elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                found.append(f"{line}: torch.load without weights_only=True")
            elif last == "load" and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{line}: {name}(allow_pickle=True)")
            elif name.startswith("yaml.") and last in {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all"}:
                found.append(f"{line}: {name}")
            elif name in {"yaml.load", "yaml.load_all"}:
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if _name(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                    found.append(f"{line}: {name} without SafeLoader")
            elif last == "read_pickle":
                found.append(f"{line}: {name}")
            if _is_true(_kw(node, "trust_remote_code")):
                found.append(f"{line}: trust_remote_code=True")
    return found


def test_scanner_catches_every_pattern() -> None:
    bad = """
import pickle
from dill import loads
import numpy as np, torch, yaml, pandas as pd
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
eval(text)
exec(code)
yaml.load(s)
yaml.load(s, Loader=yaml.Loader)
yaml.unsafe_load(s)
pd.read_pickle(f)
AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    assert len(scan_source(bad, "snippet")) == 12
    good = """
import torch, yaml, numpy as np
torch.load(f, weights_only=True)
np.load(f)
yaml.safe_load(s)
yaml.load(s, Loader=yaml.SafeLoader)
model.eval()
"""
    assert scan_source(good, "snippet") == []


def test_no_code_path_unpickles_data() -> None:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50
    found = [f for p in files for f in scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)


# ---------------------------------------------------------------- pickle bombs


class _Bomb:
    """Unpickling this creates the marker file (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bombs(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """(marker, a raw pickle, a torch.save zip) that would create the marker if ever unpickled."""
    marker = tmp_path / "PWNED"
    raw = pickle.dumps(_Bomb(marker))
    zipped = tmp_path / "bomb.pt"
    torch.save({"weight": _Bomb(marker)}, zipped)
    return marker, raw, zipped.read_bytes()


def _replace_committed(directory: Path, name: str, data: bytes) -> None:
    """Swap a committed file for `data` AND fix its checksums in the manifest (the worst case: no mismatch)."""
    import hashlib

    (directory / name).write_bytes(data)
    m = json.loads((directory / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == name:
            e.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        if e["index_file"] == name:
            e.update(index_sha256=hashlib.sha256(data).hexdigest(), index_bytes=len(data))
    (directory / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_hidden(tmp_path_factory.mktemp("security") / "ds", 6)


@pytest.mark.parametrize("which", ["shard", "index"])
@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save"])
def test_pickle_bomb_as_a_shard_or_index_is_refused(small, tmp_path, which, kind) -> None:
    marker, raw, zipped = _bombs(tmp_path)
    d = tmp_path / "ds"
    shutil.copytree(small, d)
    _replace_committed(d, "shard-00000.arrow" if which == "shard" else "shard-00000.index.arrow",
                       raw if kind == "raw-pickle" else zipped)
    with pytest.raises((StoreError, pa.ArrowException)):
        ds = open_hidden(d)
        ds[0]
    report = verify(d)
    assert not report.ok and any("shard 0" in str(i) or i.shard == 0 for i in report.issues)
    from dspark_train.data import open_source

    with pytest.raises((StoreError, pa.ArrowException, ValueError)):
        open_source(d)
    assert not marker.exists()


def test_pickle_bomb_as_checkpoint_vocab_or_record_is_refused(tmp_path, tiny_random_target) -> None:
    from safetensors import SafetensorError

    from dspark_data.stream.record import RecordError, read_record
    from dspark_train.checkpoint import Checkpointer
    from dspark_train.data.checks import load_vocab
    from dspark_train.model.draft import DSparkDraft  # noqa: F401  (the checkpoint's model class exists)

    marker, raw, zipped = _bombs(tmp_path)
    for payload in (raw, zipped):
        step = tmp_path / "train" / "checkpoints" / "step-000002"
        step.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "optimizer.safetensors", "rng-rank00000.safetensors"):
            (step / name).write_bytes(payload)
        (step / "state.json").write_text(json.dumps({"world_size": 1, "step": 2}))
        (step / "optimizer.json").write_text(json.dumps({"param_groups": []}))
        (step.parent / "latest").write_text("step-000002\n")
        ckpt = Checkpointer(tmp_path / "train")
        model = torch.nn.Linear(2, 2)
        with pytest.raises((SafetensorError, ValueError, OSError)):
            ckpt.load(ckpt.latest(), model=model, optimizer=torch.optim.AdamW(model.parameters()))
        vocab = tmp_path / "vocab.safetensors"
        vocab.write_bytes(payload)
        write_vocab_manifest(vocab)  # past the checksum check: the loader itself must refuse the pickle
        with pytest.raises((SafetensorError, ValueError, OSError)):
            load_vocab(vocab, target_vocab_size=2048, draft_vocab_size=1024)
        with pytest.raises(RecordError):
            read_record(payload)
    assert not marker.exists()


def test_pickle_bomb_as_target_weights_is_refused(tmp_path, tiny_random_target) -> None:
    """A target directory whose only weights are a pickled `pytorch_model.bin`: the target-head loader reads
    safetensors only, and the transformers capture backend must not unpickle it either."""
    from dspark_data.capture import EngineOptions, plan_layers
    from dspark_data.capture.hf_backend import HfCapture
    from dspark_data.targets.weights import load_target_head

    marker, _, zipped = _bombs(tmp_path)
    target = tmp_path / "target"
    shutil.copytree(tiny_random_target, target)
    for p in target.glob("*.safetensors*"):
        p.unlink()
    (target / "pytorch_model.bin").write_bytes(zipped)
    with pytest.raises((FileNotFoundError, OSError, ValueError)):
        load_target_head(str(target))
    plan = plan_layers([1, 3, 5], True, 6, 128)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; what matters is the marker below
        HfCapture(str(target), plan, EngineOptions(dtype="float32", batch_size=1))
    assert not marker.exists(), "transformers unpickled pytorch_model.bin"


# ---------------------------------------------------------------- paths cannot escape


BAD_NAMES = ["../outside.arrow", "/etc/passwd", "sub/shard-00000.arrow", "..", "~root", "C:evil.arrow",
             "shard\\..\\x.arrow", "a\x00b"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=[repr(b) for b in BAD_NAMES])
@pytest.mark.parametrize("field", ["file", "index_file", "errors_file"])
def test_manifest_names_cannot_leave_the_directory(small, tmp_path, bad, field) -> None:
    d = tmp_path / "ds"
    shutil.copytree(small, d)
    decoy = tmp_path / "outside.arrow"
    decoy.write_bytes(b"precious")
    m = json.loads((d / "manifest.json").read_text())
    if field == "errors_file":
        m["errors_file"] = bad
    else:
        m["shards"][0][field] = bad
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="plain names"):
        open_dataset(d)
    assert not verify(d).ok
    with pytest.raises(StoreError):
        HiddenStateWriter(d, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split", target="tiny:random",
                          seq_len=64, shard_bytes=1 << 16)
    assert decoy.read_bytes() == b"precious"


def _writer(d: Path) -> HiddenStateWriter:
    return HiddenStateWriter(d, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split", target="tiny:random",
                             seq_len=64, shard_bytes=1 << 16)


def test_symlinks_pointing_out_are_refused(small, tmp_path) -> None:
    # a committed shard replaced by a link to an identical copy outside: checksums match, still refused
    d = tmp_path / "shard-link"
    shutil.copytree(small, d)
    outside = tmp_path / "outside.arrow"
    shutil.copy(d / "shard-00000.arrow", outside)
    (d / "shard-00000.arrow").unlink()
    os.symlink(outside, d / "shard-00000.arrow")
    with pytest.raises(StoreError, match="outside the dataset directory"):
        open_hidden(d)[0]
    report = verify(d)
    assert not report.ok and any("outside the dataset directory" in i.message for i in report.issues)
    # an index file linked out
    d2 = tmp_path / "index-link"
    shutil.copytree(small, d2)
    shutil.copy(d2 / "shard-00001.index.arrow", tmp_path / "outside.index.arrow")
    (d2 / "shard-00001.index.arrow").unlink()
    os.symlink(tmp_path / "outside.index.arrow", d2 / "shard-00001.index.arrow")
    with pytest.raises(StoreError, match="outside the dataset directory"):
        open_dataset(d2)
    assert not verify(d2).ok
    # writer-owned files linked to a victim: a writer opening the directory must not truncate the victim
    for name in ("errors.jsonl", ".writer.lock"):
        d3 = tmp_path / f"victim-{name}"
        shutil.copytree(small, d3)
        victim = tmp_path / f"victim-of-{name}"
        victim.write_bytes(b"precious data\n" * 8)
        (d3 / name).unlink(missing_ok=True)
        os.symlink(victim, d3 / name)
        with pytest.raises(StoreError, match="symbolic link|symbolic links"):
            w = _writer(d3)
            w.record_error("x", "test", "")
            w.close()
        assert victim.read_bytes() == b"precious data\n" * 8, f"the writer wrote through {name}"


def test_checkpoint_pointer_cannot_leave_the_checkpoints(tmp_path) -> None:
    from dspark_train.checkpoint import Checkpointer, CheckpointMismatch

    elsewhere = tmp_path / "elsewhere" / "step-000009"
    elsewhere.mkdir(parents=True)
    (elsewhere / "state.json").write_text("{}")
    ckpts = tmp_path / "train" / "checkpoints"
    ckpts.mkdir(parents=True)
    for bad in ("../../elsewhere/step-000009", str(elsewhere), "step-000009/../../../elsewhere/step-000009"):
        (ckpts / "latest").write_text(bad + "\n")
        with pytest.raises(CheckpointMismatch, match="not a step-NNNNNN directory"):
            Checkpointer(tmp_path / "train").latest()


# ---------------------------------------------------------------- checksums


def _flip_payload(d: Path) -> str:
    entry = load_manifest(d).shards[0]
    idx = pa.ipc.open_file(pa.memory_map(str(d / entry.index_file))).read_all()
    off, length = idx["offset"][0].as_py(), idx["length"][0].as_py()
    data = bytearray((d / entry.file).read_bytes())
    data[off + length - 100] ^= 0x01  # inside the hidden-state payload
    (d / entry.file).write_bytes(bytes(data))
    return idx["id"][0].as_py()


def test_checksum_mismatch_is_refused_by_verify_and_trainer(tmp_path) -> None:
    from dspark_train.data import open_source
    from dspark_train.data.integrity import CorruptData

    d = write_hidden(tmp_path / "raw", 6, codec="raw")  # raw: nothing but the checksum can notice
    sid = _flip_payload(d)
    report = verify(d)
    assert not report.ok and any(sid in i.sample_ids for i in report.issues)
    assert CliRunner().invoke(app, ["verify", str(d)]).exit_code == 1
    with pytest.raises(CorruptData, match=sid):
        open_source(d)
    # an index whose checksum does not match the manifest is refused when a reader opens the dataset
    d2 = write_hidden(tmp_path / "idx", 6)
    entry = load_manifest(d2).shards[0]
    data = bytearray((d2 / entry.index_file).read_bytes())
    data[-20] ^= 0x01
    (d2 / entry.index_file).write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        open_dataset(d2)


@pytest.mark.xfail(strict=True, reason="known gap: the store's reader does not re-hash a sample when it reads it "
                   "(sha256 costs more than decoding); `dspark verify` and the trainer's start-up check do")
def test_reader_refuses_a_damaged_sample_on_read(tmp_path) -> None:
    d = write_hidden(tmp_path / "raw", 6, codec="raw")
    _flip_payload(d)
    with pytest.raises(StoreError):
        open_hidden(d)[0]


# ---------------------------------------------------------------- the stream gateway: bind and token


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, hexport = parts[1].rsplit(":", 1)
            if parts[3] == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


def _serve(tmp_path: Path, target: str, port: int, env: dict[str, str], *extra: str):
    argv = ["serve-target", "--recipe", "tiny", "--set", f"target.model={target}", "--set", "seq_len=64",
            "--port", str(port), "--fake-upstream", *extra]
    return harness.start(argv, tmp_path / "serve.log", env=env)


def _wait(url: str, headers: dict[str, str], proc, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.is_alive(), harness.log_tail(log)
        try:
            if httpx.get(url + "/v1/info", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve-target did not come up:\n" + harness.log_tail(log))


def test_stream_gateway_binds_loopback_by_default_and_checks_a_token(tmp_path, tiny_random_target) -> None:
    import inspect
    import signal

    from cli.serve_target import serve_target
    from dspark_data.stream.launch import ServeOptions

    assert inspect.signature(serve_target).parameters["host"].default == "127.0.0.1" == ServeOptions().host
    port = free_port()  # started with no --host: must listen on 127.0.0.1 only
    proc = _serve(tmp_path, tiny_random_target, port, {"DSPARK_STREAM_TOKEN": ""})
    try:
        _wait(f"http://127.0.0.1:{port}", {}, proc, tmp_path / "serve.log")
        assert _listeners(port) == {"0100007F"}, _listeners(port)  # 127.0.0.1 only, no wildcard
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
    token = "k" * 40
    port = free_port()
    proc = _serve(tmp_path, tiny_random_target, port, {"DSPARK_STREAM_TOKEN": token})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url, {"Authorization": f"Bearer {token}"}, proc, tmp_path / "serve.log")
        for route in ("/health", "/v1/info", "/v1/stats"):  # a token, once set, is checked even on loopback
            assert httpx.get(url + route, timeout=5).status_code == 401
            assert httpx.get(url + route, headers={"Authorization": f"Bearer {token[:-1]}x"}).status_code == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
    runner = CliRunner()
    public = runner.invoke(app, ["serve-target", "--host", "0.0.0.0"], env={"DSPARK_STREAM_TOKEN": ""})
    assert public.exit_code == 2 and "DSPARK_STREAM_TOKEN" in public.output
    weak = runner.invoke(app, ["serve-target", "--host", "0.0.0.0", "--token", "short"])
    assert weak.exit_code == 2 and "at least 16" in public.output + weak.output


def test_stream_token_never_travels_in_argv() -> None:
    """`dspark train --nproc-per-node N --stream --token T` re-launches torchrun: T goes in the environment."""
    from dspark_train.train import torchrun_argv

    secret = "s3cret-token-value-0123456789"
    for given in (["--token", secret], [f"--token={secret}"]):
        argv = torchrun_argv(["--stream", "--endpoint", "http://h:1", *given, "--nproc-per-node", "2"], 2)
        assert not any(secret in a or a.startswith("--token") for a in argv), argv
        assert argv[argv.index("--endpoint") + 1] == "http://h:1"  # the rest is passed on unchanged
