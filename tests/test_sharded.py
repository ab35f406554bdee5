"""The sharded layout (in-process engine): equal to the SQLite layout, store reads across shards,
a build killed between shards, --update, damaged shards, the Ray extra being optional."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, write_jsonl
from rag_pipeline.errors import ConfigError, IndexError_
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.format import read_manifest
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.index.store import ShardedChunkStore, open_vectors

QUERIES = ["document 123 about topic4 and word123", "word77 topic0", "topic3 document 9", "nothing matches zzz"]


def _corpus(tmp_path: Path, n: int = 240) -> Path:
    """Documents of varied length (1-3 chunks each), one exact duplicate, in a JSONL and a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"d{i}", "title": f"T{i}", "text": " ".join(f"document {i} about topic{i % 7} and word{i}" for _ in range(1 + i % 12))}
            for i in range(n)]
    rows.append({"id": "copy", "title": "C", "text": rows[3]["text"]})  # dropped as a duplicate chunk
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[: n // 2])
    pq.write_table(pa.Table.from_pylist(rows[n // 2 :]), tmp_path / "in" / "b.parquet", row_group_size=16)
    return tmp_path / "in"


def _cfg(src: Path, index: Path, **kw) -> IndexConfig:
    return IndexConfig(paths=[str(src)], index=str(index), embedder="hashing:64", **{"shard_size": 100, **kw})


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sharded_layout_equals_sqlite_layout(tmp_path, hashing_embedder, kind) -> None:
    src = _corpus(tmp_path)
    a = build_index(_cfg(src, tmp_path / "sqlite", index_type=kind, nprobe=1000), embedder=hashing_embedder)
    b = build_index(_cfg(src, tmp_path / "sharded", index_type=kind, nprobe=1000, layout="sharded"), embedder=hashing_embedder)
    assert a["layout"] == "sqlite" and b["layout"] == "sharded" and b["format_version"] == 2
    assert a["corpus"]["fingerprint"] == b["corpus"]["fingerprint"] and a["corpus"]["chunks"] == b["corpus"]["chunks"] > 240  # more chunks than documents
    assert a["corpus"]["duplicates_dropped"] == b["corpus"]["duplicates_dropped"] == 1
    assert len(b["shards"]["rows"]) >= 3 and set(b["shards"]["rows"][:-1]) == {100}
    listing = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert listing == sorted(["bm25", "index.faiss", "keys.sqlite", "manifest.json", "shards", *(["index.ivfdata"] if kind == "ivf" else [])])
    ra, rb = Retriever.load(tmp_path / "sqlite", embedder=hashing_embedder), Retriever.load(tmp_path / "sharded", embedder=hashing_embedder)
    assert [c.id for c in ra.store.iter_chunks()] == [c.id for c in rb.store.iter_chunks()]
    n = len(ra)
    np.testing.assert_array_equal(open_vectors(ra.index_dir, ra.manifest, ra.store).get_rows(np.arange(n)),
                                  open_vectors(rb.index_dir, rb.manifest).get_rows(np.arange(n)))
    for ha, hb in zip(ra.search_batch(QUERIES, 5), rb.search_batch(QUERIES, 5)):
        assert [(h.chunk, round(h.score, 5)) for h in ha] == [(h.chunk, round(h.score, 5)) for h in hb]


def test_chunk_store_reads_by_id_across_shards(tmp_path, hashing_embedder) -> None:
    src = _corpus(tmp_path)
    m = build_index(_cfg(src, tmp_path / "idx", layout="sharded", shard_size=64), embedder=hashing_embedder)
    store = ShardedChunkStore(tmp_path / "idx", m["shards"]["rows"])
    every = list(store.iter_chunks(batch=50))
    assert [c.row for c in every] == list(range(len(store))) == list(range(m["corpus"]["chunks"]))
    rows = [len(every) - 1, 0, 63, 64, 200, 129, 64]  # across shard boundaries, out of order, repeated
    assert store.get_rows(rows) == [every[r] for r in rows]
    for c in (every[5], every[64], every[-1]):
        assert store.get(c.id) == c
    with pytest.raises(KeyError):
        store.get("c-nope")
    docs = {every[10].doc_id, every[70].doc_id, every[-1].doc_id}
    by_doc = store.chunks_of_docs(docs)
    assert by_doc == {d: sorted([c for c in every if c.doc_id == d], key=lambda c: c.position) for d in docs}
    with pytest.raises(IndexError_, match="no rows"):
        store.get_rows([len(every)])


KILL = """
import os, sys
sys.path.insert(0, {repo!r})
from rag_pipeline.index import ann as ann
from rag_pipeline.index import sharded as sharded
from rag_pipeline.index.embed import HashingEmbedder
sharded.ADD_ROWS = 1  # one add job per shard, so the kill falls between shards
from rag_pipeline.index.build import IndexConfig, build_index
real, calls = ann.add_shard_file, []
def add_then_die(*a):
    calls.append(real(*a))
    if len(calls) == 2:  # killed between shards: two added, the rest not
        os._exit(9)
    return calls[-1]
ann.add_shard_file = add_then_die
build_index(IndexConfig(paths=[sys.argv[1]], index=sys.argv[2], embedder="hashing:64", shard_size=100, index_type="ivf",
                        layout="sharded", force=True), embedder=HashingEmbedder(64, 64))
"""


def test_build_killed_between_shards_leaves_the_old_index_intact(tmp_path, hashing_embedder) -> None:
    src = _corpus(tmp_path)
    idx = tmp_path / "idx"
    build_index(_cfg(src, idx, layout="sharded", index_type="ivf"), embedder=hashing_embedder)
    before = _files(idx)
    write_jsonl(src / "more.jsonl", [{"id": f"x{i}", "text": f"extra document {i} about volcanoes"} for i in range(50)])
    proc = subprocess.run([sys.executable, "-c", KILL.format(repo=str(REPO)), str(src), str(idx)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert _files(idx) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.")]  # the killed run's temporaries
    r = Retriever.load(idx, embedder=hashing_embedder)
    assert r.search("document 123 about topic4 and word123", 1)[0].chunk.doc_id == "d123"
    m = build_index(_cfg(src, idx, layout="sharded", index_type="ivf"), embedder=hashing_embedder)  # the next run cleans up
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]
    assert Retriever.load(idx, embedder=hashing_embedder).search("extra document 7 about volcanoes", 1)[0].chunk.doc_id == "x7"
    assert m["counts"]["embedded"] == m["corpus"]["chunks"]


def test_update_of_a_sharded_index_equals_a_full_rebuild(tmp_path, hashing_embedder) -> None:
    src = _corpus(tmp_path)
    build_index(_cfg(src, tmp_path / "upd", layout="sharded"), embedder=hashing_embedder)
    rows = [json.loads(line) for line in (src / "a.jsonl").read_text().splitlines()]
    rows[1]["text"] = "an entirely new text about lighthouses"
    del rows[2]
    write_jsonl(src / "a.jsonl", rows)
    upd = build_index(_cfg(src, tmp_path / "upd", layout="sharded", update=True), embedder=hashing_embedder)
    full = build_index(_cfg(src, tmp_path / "full", layout="sharded"), embedder=hashing_embedder)
    assert upd["counts"]["embedded"] == 1 and upd["counts"]["reused"] == upd["corpus"]["chunks"] - 1
    assert upd["corpus"]["fingerprint"] == full["corpus"]["fingerprint"]
    a, b = Retriever.load(tmp_path / "upd", embedder=hashing_embedder), Retriever.load(tmp_path / "full", embedder=hashing_embedder)
    assert [c.id for c in a.store.iter_chunks()] == [c.id for c in b.store.iter_chunks()]
    n = len(a)
    np.testing.assert_array_equal(open_vectors(a.index_dir, a.manifest).get_rows(np.arange(n)), open_vectors(b.index_dir, b.manifest).get_rows(np.arange(n)))
    # unchanged inputs: nothing to do; an update from the other layout reuses its vectors too
    assert build_index(_cfg(src, tmp_path / "upd", layout="sharded"), embedder=hashing_embedder).get("up_to_date")
    cross = build_index(_cfg(src, tmp_path / "upd", update=True), embedder=hashing_embedder)
    assert cross["layout"] == "sqlite" and cross["counts"]["embedded"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip header"])
def test_damaged_shard_is_detected_on_load(tmp_path, hashing_embedder, damage) -> None:
    src = _corpus(tmp_path)
    build_index(_cfg(src, tmp_path / "idx", layout="sharded"), embedder=hashing_embedder)
    path = tmp_path / "idx" / "shards" / "part-00001.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-8] if damage == "truncate" else data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
    with pytest.raises(IndexError_, match="truncated" if damage == "truncate" else "does not match its manifest hash"):
        Retriever.load(tmp_path / "idx", embedder=hashing_embedder)


def test_rerank_and_target_recall_are_recorded_and_applied(tmp_path, hashing_embedder) -> None:
    src = _corpus(tmp_path)
    # IVF-PQ ("np": no polysemous training, which takes minutes and serves only polysemous search)
    cfg = _cfg(src, tmp_path / "idx", layout="sharded", faiss_factory="IVF8,PQ16np", target_recall=0.8, rerank=3)
    m = build_index(cfg, embedder=hashing_embedder)
    t = m["index"]["tuning"]
    assert t["param"] == "nprobe" and m["index"]["nprobe"] == t["value"] and m["index"]["rerank"] == 3 and t["queries"] == min(1000, m["corpus"]["chunks"])
    assert t["reached"] and t["recall"] >= 0.8 and all(v < 0.8 for p, v in t["tried"].items() if int(p) < t["value"])
    r = Retriever.load(tmp_path / "idx", embedder=hashing_embedder)
    import faiss

    assert faiss.extract_index_ivf(r.index).nprobe == t["value"]
    assert read_manifest(tmp_path / "idx")["settings"]["target_recall"] == 0.8
    # A search returns the exact top 5 (by inner product with the stored vectors, read here from
    # the .npy files) of FAISS's top 5 * 3 IVF-PQ candidates, with exact scores, not PQ's.
    k, q = 5, hashing_embedder.encode(QUERIES)
    pq_scores, candidates = r.index.search(q, k * 3)
    stored = np.concatenate([np.load(f) for f in sorted((tmp_path / "idx" / "shards").glob("part-*.npy"))])
    for qv, cand, hits in zip(q, candidates, r.search_batch(QUERIES, k)):
        rows = [int(c) for c in cand if c >= 0]
        exact = sorted(((float(stored[row] @ qv), row) for row in rows), key=lambda sr: -sr[0])[:k]
        assert [h.score for h in hits] == pytest.approx([s for s, _ in exact], abs=1e-5)
        assert all(h.chunk.row == row or abs(h.score - s) < 1e-6 for h, (s, row) in zip(hits, exact))  # rows agree up to exact ties
    assert not np.allclose(pq_scores[:, :k], [[h.score for h in hits] for hits in r.search_batch(QUERIES, k)], atol=1e-4)  # PQ alone is not exact


def test_ray_engine_without_ray_is_a_one_line_config_error(tmp_path, hashing_embedder, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    src = _corpus(tmp_path, 20)
    with pytest.raises(ConfigError, match=r"pip install '\.\[distributed\]'") as e:
        build_index(_cfg(src, tmp_path / "idx", engine="ray"), embedder=hashing_embedder)
    assert "\n" not in str(e.value) and not (tmp_path / "idx").exists()
    with pytest.raises(ConfigError, match="writes the sharded layout"):
        IndexConfig(engine="ray", layout="sqlite")


def test_default_engine_imports_no_ray(tmp_path) -> None:
    src = _corpus(tmp_path, 20)
    code = ("import sys; from rag_pipeline.cli import main; "
            f"rc = main(['build-index', {str(src)!r}, '--index', {str(tmp_path / 'idx')!r}, '--embedder', 'hashing:64', '-q']); "
            "print(rc, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr[-2000:]


def test_ray_worker_with_other_weights_refuses_every_job_as_a_one_line_config_error(hashing_embedder) -> None:
    """A worker whose node resolves the embedder to other weights than the driver's (which the
    manifest records) returns the mismatch as data, raised in the driver; no job runs. No Ray needed."""
    from rag_pipeline.index import ray_engine as ray_engine
    from rag_pipeline.index.sharded import job_from_json, job_json

    _, ok = ray_engine._load_embedder("hashing:64", "cpu", False, hashing_embedder.weights_hash)
    assert ok is None
    _, mismatch = ray_engine._load_embedder("hashing:64", "cpu", False, "f" * 64)

    def step(job: dict) -> dict:
        raise AssertionError("a refused job must not run")

    results = [job_from_json(ray_engine._guarded(step, job_json({"shard": i}), mismatch)) for i in range(3)]
    with pytest.raises(ConfigError, match=r"embedder hashing:64 on Ray node .* has weights \w{12}, the driver's ffffffffffff: give every node") as e:
        ray_engine._raise_returned_error(results)
    assert "\n" not in str(e.value)
    assert job_from_json(ray_engine._guarded(lambda job: {"echo": job["shard"]}, job_json({"shard": 7}))) == {"echo": 7}
