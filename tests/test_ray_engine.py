"""build-index --engine ray on a local Ray cluster: the same chunk ids, vectors and search results
as the default engine; worker errors reach the user as one line. One small cluster for the module."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from conftest import write_jsonl
from rag_pipeline.errors import InputError
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.index.store import open_vectors

QUERIES = ["document 123 about topic4 and word123", "word77 topic0", "topic3 document 9"]


@pytest.fixture(scope="module")
def cluster():
    """A local cluster with 2 CPUs and a small object store, shut down after the module."""
    from rag_pipeline.index import ray_engine as ray_engine

    with ray_engine.connect(num_cpus=2, object_store_mb=256):
        yield
    assert not ray.is_initialized()


def _corpus(tmp_path, n: int = 160):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"d{i}", "title": f"T{i}", "text": " ".join(f"document {i} about topic{i % 7} and word{i}" for _ in range(1 + i % 9))}
            for i in range(n)]
    rows.append({"id": "copy", "text": rows[5]["text"]})  # a duplicate chunk, dropped by both engines
    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", rows[: n // 2])
    pq.write_table(pa.Table.from_pylist(rows[n // 2 :]), src / "b.parquet", row_group_size=8)
    (src / "notes.txt").write_text("Plain text notes about glaciers and topic5.")
    (src / "bad.txt").write_bytes(b"\x00binary")
    return src


def test_ray_engine_equals_default_engine(cluster, tmp_path, hashing_embedder, monkeypatch) -> None:
    from rag_pipeline.index import sharded as sharded

    monkeypatch.setattr(sharded, "BLOCK_BYTES", 2048)  # many blocks and split files on a small corpus
    src = _corpus(tmp_path)
    base = dict(paths=[str(src)], embedder="hashing:64", shard_size=64, index_type="ivf", nprobe=10_000)
    local = build_index(IndexConfig(index=str(tmp_path / "local"), **base), embedder=hashing_embedder)
    distributed = build_index(IndexConfig(index=str(tmp_path / "ray"), engine="ray", workers=2, **base), embedder=hashing_embedder)
    assert distributed["engine"]["name"] == "ray" and distributed["layout"] == "sharded"
    for key in ("fingerprint", "chunks", "documents", "files", "duplicates_dropped", "skipped"):
        assert local["corpus"][key] == distributed["corpus"][key], key
    a, b = Retriever.load(tmp_path / "local", embedder=hashing_embedder), Retriever.load(tmp_path / "ray", embedder=hashing_embedder)
    assert [c for c in a.store.iter_chunks()] == [c for c in b.store.iter_chunks()]
    n = len(a)
    np.testing.assert_allclose(open_vectors(a.index_dir, a.manifest, a.store).get_rows(np.arange(n)),
                               open_vectors(b.index_dir, b.manifest).get_rows(np.arange(n)), atol=1e-6)
    for ha, hb in zip(a.search_batch(QUERIES, 5), b.search_batch(QUERIES, 5)):
        assert [h.chunk.id for h in ha] == [h.chunk.id for h in hb]


def test_ray_engine_from_the_command_line_and_update(cluster, tmp_path) -> None:
    from rag_pipeline.cli import main

    src = _corpus(tmp_path, 40)
    args = ["build-index", str(src), "--index", str(tmp_path / "idx"), "--embedder", "hashing:64", "--engine", "ray", "--workers", "2",
            "--shard-size", "16", "-q"]
    assert main(args) == 0
    write_jsonl(src / "more.jsonl", [{"id": "new", "text": "a new document about volcanoes"}])
    m = build_index(IndexConfig(paths=[str(src)], index=str(tmp_path / "idx"), embedder="hashing:64", engine="ray", shard_size=16, update=True))
    assert m["counts"]["embedded"] == 1 and m["counts"]["reused"] == m["corpus"]["chunks"] - 1


def test_worker_errors_reach_the_user_as_one_line(cluster, tmp_path, hashing_embedder) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: malformed JSONL line") as e:
        build_index(IndexConfig(paths=[str(tmp_path / "in")], index=str(tmp_path / "idx"), embedder="hashing:64", engine="ray"),
                    embedder=hashing_embedder)
    assert "\n" not in str(e.value) and not (tmp_path / "idx").exists()
