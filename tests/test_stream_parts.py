"""Streaming over data captured across nodes (issue 15, "Capture across nodes, and training on the parts").

`dspark train --stream --data PARENT` takes a parent of `regen --num-shards N` parts as one regen dataset,
and `--cache-dir PARENT` takes a parent of `dump-hidden --num-shards N` parts as a pre-filled cache: its
samples are read from disk, only the missing ones are streamed. Both run the real trainer against a real
`dspark serve-target --fake-upstream` gateway (deterministic states, so runs can be compared bit for bit);
requests are counted by the gateway's own /v1/stats.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from regen_schema import REGEN_SCHEMA
from test_stream_support import (
    SMALL,
    Server,
    make_regen,
    offline_matches,
    run,
    same_weights,
    stream_stats,
    train_argv,
)

from dspark_data.capture.parts import part_fingerprint
from dspark_data.prompts.select import part_of
from dspark_data.store import HiddenStateWriter, ShardWriter, StoreError, open_dataset
from dspark_data.store.parts import open_any, part_name
from dspark_data.stream.client import StreamClient
from dspark_data.stream.replay_cache import open_cache, open_seed
from dspark_data.targets import load_target_info
from dspark_train.data.stream_open import stream_settings, stream_writer_kwargs
from schemas.loading import load_recipe

N = 40  # conversations (36 train + 4 val at val_fraction 0.1)
SEEDED = 26  # of them captured beforehand, as 2 dump-hidden parts
TIMING = ("tokens_per_s", "data_wait_frac", "time", "elapsed_s")


def _regen_parts(single: Path, parent: Path, num_shards: int) -> Path:
    """The single regen dataset's rows as `dspark regen --num-shards N` lays them out (part_of, fingerprint)."""
    ds = open_dataset(single, require_complete=True)
    rows = [ds.row(i) for i in range(len(ds))]
    for i in range(num_shards):
        fp = {"test": "stream", "num_shards": num_shards, "shard_index": i}
        with ShardWriter(parent / part_name(num_shards, i), "regen", REGEN_SCHEMA, fp, shard_rows=16) as w:
            for row in rows:
                if part_of(row["id"], num_shards) == i:
                    w.write({k: row[k] for k in ("id", "input_ids", "loss_mask")})
    return parent


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _served(server: Server, before: dict[str, int]) -> dict[str, int]:
    after = server.stats()["served_ids"]
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_random_target):
    root = tmp_path_factory.mktemp("stream-parts")
    single = make_regen(root / "regen", N)
    parts = _regen_parts(single, root / "regen-parts", 2)
    server = Server(fake=True, sets=SMALL, log=root / "server.log")
    server.start().wait_ready(120)
    yield {"root": root, "single": single, "parts": parts, "server": server, "target": tiny_random_target}
    server.stop()


@pytest.fixture(scope="module")
def over_parts(env) -> Path:
    """A plain streamed run (no cache) over the regen parts parent: the reference of both tests."""
    out = env["root"] / "over-parts"
    before = env["server"].stats()["served_ids"]
    proc = run(train_argv(env["parts"], out, [env["server"].url], nproc=1, sets=SMALL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    env["served_over_parts"] = _served(env["server"], before)
    return out


def test_stream_over_regen_parts_equals_the_single_dataset(env, over_parts) -> None:
    root = env["root"]
    single = run(train_argv(env["single"], root / "over-single", [env["server"].url], nproc=1, sets=SMALL))
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _metrics(root / "over-single"), _metrics(over_parts)
    assert [r["step"] for r in a if r["kind"] == "val"] and any(r["kind"] == "train" for r in a)
    assert a == b  # the same train losses and validation figures, bit for bit
    assert same_weights(root / "over-single", over_parts)
    assert sorted(env["served_over_parts"]) == sorted(open_dataset(env["single"]).ids)  # both parts' conversations


def _seed(env, parent: Path) -> set[str]:
    """What `dump-hidden --backend vllm --num-shards 2` writes for the first SEEDED conversations: each part's
    samples captured by the (fake-upstream) gateway and stored by dump-hidden's writer, with its fingerprint."""
    recipe = load_recipe("tiny", SMALL)
    info = load_target_info(env["target"])
    settings = stream_settings(recipe, info.num_hidden_layers, info.hidden_size)
    expect = settings.stream_fields()
    regen = open_any(env["parts"], require_complete=True)
    kwargs = stream_writer_kwargs(settings, regen.manifest.fingerprint_hash, [env["server"].url])
    single = open_dataset(env["single"], require_complete=True)
    ids = set(single.ids[:SEEDED])
    client = StreamClient([env["server"].url], None, expect=expect, max_inflight=2)
    client.connect()
    try:
        for i in range(2):
            extra = {**kwargs["extra_fingerprint"], **part_fingerprint(2, i)}
            with HiddenStateWriter(parent / part_name(2, i), **{**kwargs, "extra_fingerprint": extra}) as w:
                for n in range(len(regen)):
                    sid = regen.ids[n]
                    if sid in ids and part_of(sid, 2) == i:
                        row = regen.row(n)
                        ids_, mask = (np.asarray(row[k][: recipe.seq_len]) for k in ("input_ids", "loss_mask"))
                        record = client.fetch(sid, ids_.astype(np.int64), mask.astype(bool))
                        w.store.write_batch(record.batch, raw_bytes=[record.raw_bytes])
    finally:
        client.close()
    return ids


def test_cache_seeded_by_dump_hidden_parts(env, over_parts, tmp_path) -> None:
    """Seeded samples are never requested; the run trains like a fully streamed one and like offline on the cache."""
    server: Server = env["server"]
    seed_dir = tmp_path / "hidden-parts"
    seeded = _seed(env, seed_dir)
    before = server.stats()["served_ids"]
    proc = run(train_argv(env["parts"], tmp_path / "seeded", [server.url], nproc=1, sets=SMALL, cache=seed_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = _served(server, before)
    everything = set(open_dataset(env["single"]).ids)
    assert set(served) == everything - seeded and set(served.values()) == {1}  # only the missing, once each
    stats = stream_stats(tmp_path / "seeded")[0]
    assert stats["streamed"] == N - SEEDED and stats["cache_hits"] > 0
    assert sorted(p.name for p in seed_dir.iterdir() if p.is_dir()) == [part_name(2, 0), part_name(2, 1), "rank-00000"]
    cache = open_cache(seed_dir)
    assert sorted(cache.ids) == sorted(everything) and cache.duplicates == 0
    assert same_weights(tmp_path / "seeded", over_parts)
    offline_matches(tmp_path / "seeded", seed_dir, nproc=1, sets=SMALL)
    assert _metrics(tmp_path / "seeded") == _metrics(tmp_path / "offline")

    # Merge checks, before anything is written: a missing part, other settings.
    fp = json.loads((seed_dir / "cache.json").read_text())["fingerprint"]
    assert len(open_seed(seed_dir, fp)) == SEEDED
    other = tmp_path / "other"
    shutil.copytree(seed_dir / part_name(2, 0), other / part_name(2, 0))
    with pytest.raises(StoreError, match="missing"):
        open_seed(other, fp)
    with pytest.raises(StoreError, match="backend: 'vllm' \\(parts\\) vs 'hf' \\(stream\\)"):
        open_seed(seed_dir, {**fp, "backend": "hf"})
    # The seed was captured from the regen parts; streaming the single regen dataset into it is refused.
    refused = run(train_argv(env["single"], tmp_path / "refused", [server.url], nproc=1, sets=SMALL, cache=seed_dir))
    assert refused.returncode != 0 and "part-*-of-*" in refused.stderr and "regen_fingerprint" in refused.stderr
