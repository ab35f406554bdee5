"""build-index: FAISS against brute force, atomic builds, bad input, update, manifests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TOPICS, write_jsonl
from rag_pipeline.errors import ConfigError, IndexError_, InputError
from rag_pipeline.index.build import IndexConfig, build_index, make_faiss_index
from rag_pipeline.index.embed import HashingEmbedder
from rag_pipeline.index.format import read_manifest
from rag_pipeline.index.retriever import Retriever


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ db.T  # (queries, n)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("kind,pq", [("flat", False), ("hnsw", False), ("ivf", False), ("ivf", True)])
def test_faiss_topk_equals_bruteforce_at_exact_settings(kind: str, pq: bool) -> None:
    rng = np.random.default_rng(0)
    n, d, k = 2000, 32, 10
    db, q = _unit(rng, n, d), _unit(rng, 50, d)
    cfg = IndexConfig(ivf_pq=pq, pq_m=8, nlist=16, ef_search=n)
    index = make_faiss_index(kind, d, n, cfg)
    if not index.is_trained:
        index.train(db)
    index.add(db)
    if kind == "ivf":
        index.nprobe = index.nlist  # exact setting: every list probed
    scores, ids = index.search(q, k)
    ref = db
    if pq:  # exact reference for PQ: brute force over the vectors as the index stores them
        ref = index.reconstruct_n(0, n)
    ref_scores, ref_ids = _brute(ref, q, k)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    # ids must agree wherever scores are not tied within tolerance
    untied = np.abs(np.diff(ref_scores, axis=1, append=-np.inf)) > 1e-4
    assert (ids[untied] == ref_ids[untied]).mean() == 1.0


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_build_writes_expected_files_and_manifest(small_index) -> None:
    idx, _ = small_index
    assert sorted(p.name for p in idx.iterdir()) == ["bm25", "chunks.sqlite", "index.faiss", "manifest.json"]
    m = read_manifest(idx)
    assert m["embedder"]["id"] == "hashing:64" and m["embedder"]["dim"] == 64
    assert m["metric"] == "inner_product" and m["normalized"] is True
    assert m["corpus"]["chunks"] == len(TOPICS) and m["index"]["type"] == "flat"
    assert {"size", "overlap"} <= set(m["chunking"]) and "faiss-cpu" in m["versions"] or "faiss-gpu" in m["versions"]
    assert len(m["corpus"]["fingerprint"]) == 64 and m["files"]["index.faiss"]["bytes"] > 0
    assert not list(idx.parent.glob(".idx.tmp-*"))


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_build_leaves_previous_index_intact(small_index, docs_jsonl, hashing_embedder, monkeypatch, exc) -> None:
    idx, cfg = small_index
    before = _files(idx)
    write_jsonl(docs_jsonl.parent / "more.jsonl", [{"id": "x", "title": "X", "text": "Extra document about volcanoes."}])
    import rag_pipeline.index.build as index_mod

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(index_mod, "_fill_index", fail)
    cfg2 = IndexConfig(paths=[str(docs_jsonl.parent)], index=cfg.index, embedder="hashing:64", force=True)
    with pytest.raises(type(exc)):
        build_index(cfg2, embedder=hashing_embedder)
    assert _files(idx) == before
    assert not [p for p in idx.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    r = Retriever.load(idx, embedder=hashing_embedder)
    assert r.search("Eiffel tower Paris", 1)[0].chunk.doc_id == "eiffel"


def test_unchanged_inputs_do_nothing_and_force_rebuilds(small_index, hashing_embedder) -> None:
    idx, cfg = small_index
    before = _files(idx)
    assert build_index(cfg, embedder=hashing_embedder).get("up_to_date") is True
    assert _files(idx) == before
    with pytest.raises(ConfigError, match="chunk_overlap 64 is not below the chunk size, 64 tokens .*: lower --chunk-overlap"):
        build_index(dataclasses.replace(cfg, chunk_overlap=64), embedder=hashing_embedder)  # chunk_size 0: the embedder's 64
    # new weights under the same id or path (a fine-tuned embedder saved over the old one) embed again
    retrained = HashingEmbedder(dim=64)
    retrained.weights_hash = "0" * 64
    assert not build_index(cfg, embedder=retrained).get("up_to_date")
    assert read_manifest(idx)["embedder"]["weights_sha256"] == "0" * 64
    cfg.force = True
    m = build_index(cfg, embedder=hashing_embedder)
    assert not m.get("up_to_date") and m["counts"]["embedded"] == len(TOPICS)


def test_update_equals_full_rebuild(tmp_path, hashing_embedder) -> None:
    rows = [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()]
    src = write_jsonl(tmp_path / "in" / "docs.jsonl", rows)
    cfg = IndexConfig(paths=[str(src)], index=str(tmp_path / "upd"), embedder="hashing:64")
    build_index(cfg, embedder=hashing_embedder)
    rows[1]["text"] = "Rust is a language that guarantees memory safety through ownership and borrowing."
    del rows[2]
    rows.append({"id": "tea", "title": "Tea", "text": "Tea is an aromatic beverage prepared from cured leaves."})
    write_jsonl(src, rows)
    upd = build_index(IndexConfig(paths=[str(src)], index=cfg.index, embedder="hashing:64", update=True), embedder=hashing_embedder)
    assert upd["counts"] == {"embedded": 2, "reused": len(rows) - 2}
    full = build_index(IndexConfig(paths=[str(src)], index=str(tmp_path / "full"), embedder="hashing:64"), embedder=hashing_embedder)
    assert upd["corpus"]["fingerprint"] == full["corpus"]["fingerprint"]
    a, b = Retriever.load(cfg.index, embedder=hashing_embedder), Retriever.load(tmp_path / "full", embedder=hashing_embedder)
    assert [c.id for c in a.store.iter_chunks()] == [c.id for c in b.store.iter_chunks()]
    np.testing.assert_array_equal(a.index.reconstruct_n(0, len(a)), b.index.reconstruct_n(0, len(b)))
    assert "moon" not in {c.doc_id for c in a.store.iter_chunks()}


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
def test_index_directory_named_with_uri_characters_loads_and_updates(tmp_path, hashing_embedder, layout) -> None:
    """SQLite files are opened by URI: '#', '?' and '%' in a user's directory name must not cut the path short."""
    rows = [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()]
    src = write_jsonl(tmp_path / "in" / "docs.jsonl", rows)
    target = tmp_path / "team #2 ?v=1 100%" / "idx"
    cfg = IndexConfig(paths=[str(src)], index=str(target), embedder="hashing:64", layout=layout)
    build_index(cfg, embedder=hashing_embedder)
    write_jsonl(src, rows[:-1])  # --update reads the old vectors through the same opener
    upd = build_index(IndexConfig(paths=[str(src)], index=str(target), embedder="hashing:64", layout=layout, update=True),
                      embedder=hashing_embedder)
    assert upd["counts"] == {"embedded": 0, "reused": len(rows) - 1}
    r = Retriever.load(target, embedder=hashing_embedder)
    assert len(r) == len(rows) - 1 and r.search(rows[0]["text"], 1)[0].chunk.doc_id == rows[0]["id"]


def test_update_with_other_embedder_is_refused(small_index) -> None:
    from rag_pipeline.index.embed import HashingEmbedder

    idx, cfg = small_index
    with pytest.raises(IndexError_, match="built with embedder hashing:64"):
        build_index(IndexConfig(paths=cfg.paths, index=cfg.index, embedder="hashing:32", update=True), embedder=HashingEmbedder(32))


def test_inputs_without_chunks_are_an_error_and_write_nothing(tmp_path, hashing_embedder) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.txt").write_text("   \n")
    (tmp_path / "in" / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    target = tmp_path / "out"
    with pytest.raises(InputError, match="no chunks"):
        build_index(IndexConfig(paths=[str(tmp_path / "in")], index=str(target), embedder="hashing:64"), embedder=hashing_embedder)
    assert not target.exists() and not list(tmp_path.glob(".out*"))


def test_bad_files_are_skipped_with_reasons(tmp_path, hashing_embedder) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.txt").write_text("Glaciers are slow rivers of ice.")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (d / "bin.md").write_bytes(b"abc\x00def")
    (d / "empty.md").write_text("")
    m = build_index(IndexConfig(paths=[str(d)], index=str(tmp_path / "o"), embedder="hashing:64"), embedder=hashing_embedder)
    reasons = {Path(s["path"]).name: s["reason"] for s in m["corpus"]["skipped"]}
    assert set(reasons) == {"latin1.txt", "bin.md", "empty.md"}
    assert reasons["latin1.txt"].startswith("non-UTF-8") and reasons["bin.md"].startswith("binary")
    assert m["corpus"]["chunks"] == 1 and "skipped 3" in m["report"]


def test_malformed_jsonl_names_file_and_line(tmp_path, hashing_embedder) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: malformed JSONL"):
        build_index(IndexConfig(paths=[str(p)], index=str(tmp_path / "o"), embedder="hashing:64"), embedder=hashing_embedder)


def test_missing_input_and_bad_settings(tmp_path, hashing_embedder) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_index(IndexConfig(paths=[str(tmp_path / "nope")], index=str(tmp_path / "o"), embedder="hashing:64"), embedder=hashing_embedder)
    with pytest.raises(ConfigError, match="exceeds the embedder's max"):
        build_index(IndexConfig(paths=[str(tmp_path / "nope")], index=str(tmp_path / "o"), chunk_size=999, embedder="hashing:64"), embedder=hashing_embedder)
    with pytest.raises(ConfigError, match="contradict"):
        IndexConfig(force=True, update=True)


def test_duplicate_chunks_dropped_and_ids_stable(tmp_path, hashing_embedder) -> None:
    text = "Identical paragraph about lighthouses and their keepers."
    src = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": text}, {"id": "b", "text": text}, {"id": "c", "text": "Other text."}])
    m1 = build_index(IndexConfig(paths=[str(src)], index=str(tmp_path / "i1"), embedder="hashing:64"), embedder=hashing_embedder)
    m2 = build_index(IndexConfig(paths=[str(src)], index=str(tmp_path / "i2"), embedder="hashing:64"), embedder=hashing_embedder)
    assert m1["corpus"]["duplicates_dropped"] == 1 and m1["corpus"]["chunks"] == 2
    assert m1["corpus"]["fingerprint"] == m2["corpus"]["fingerprint"]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_types_end_to_end(tmp_path, hashing_embedder, kind) -> None:
    rows = [{"id": f"d{i}", "title": f"T{i}", "text": f"document {i} about topic{i % 7} and word{i}"} for i in range(400)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = IndexConfig(paths=[str(src)], index=str(tmp_path / kind), embedder="hashing:64", index_type=kind, shard_size=64, nprobe=64)
    m = build_index(cfg, embedder=hashing_embedder)
    assert m["index"]["type"] == kind and m["corpus"]["chunks"] == 400
    r = Retriever.load(cfg.index, embedder=hashing_embedder)
    hits = r.search("document 123 about topic4 and word123", 3)
    assert hits[0].chunk.doc_id == "d123"
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score


def test_manifest_json_is_stable_text(small_index) -> None:
    idx, _ = small_index
    raw = (idx / "manifest.json").read_text()
    assert json.loads(raw)["kind"] == "rag-index" and raw.endswith("\n")


class _SpyEmbedder:
    """The hashing embedder, counting the texts it is asked to tokenize or embed."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.model_id, self.dim, self.max_tokens, self.weights_hash = inner.model_id, inner.dim, inner.max_tokens, inner.weights_hash

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        self.calls += 1
        return self.inner.token_offsets(text)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.calls += len(texts)
        return self.inner.encode(texts, batch_size)


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
@pytest.mark.parametrize("settings,match", [
    ({"faiss_factory": "IVF,Nonsense"}, r"not a FAISS index_factory string"),
    ({"faiss_factory": "IVF16,PQ7"}, r"not a FAISS index_factory string for dimension 64"),  # 7 does not divide 64
    ({"index_type": "ivf", "ivf_pq": True, "pq_m": 7}, r"pq_m=7 must divide the embedding dimension 64"),
    ({"ivf_pq": True, "pq_m": 7}, r"pq_m=7 must divide"),  # auto may pick ivf at scale: rejected up front too
])
def test_bad_index_settings_fail_before_any_chunking(tmp_path, docs_jsonl, hashing_embedder, layout, settings, match) -> None:
    spy = _SpyEmbedder(hashing_embedder)
    cfg = IndexConfig(paths=[str(docs_jsonl)], index=str(tmp_path / "idx"), embedder="hashing:64", layout=layout, **settings)
    with pytest.raises(ConfigError, match=match) as e:
        build_index(cfg, embedder=spy)
    assert "\n" not in str(e.value) and spy.calls == 0 and not (tmp_path / "idx").exists()


def test_target_recall_on_a_flat_index_has_nothing_to_tune(small_index, hashing_embedder, caplog) -> None:
    """auto picks flat for a small corpus; flat is exact, so --target-recall is met without tuning
    (not an error after embedding)."""
    import dataclasses
    import logging

    _, cfg = small_index
    with caplog.at_level(logging.INFO, logger="rag_pipeline.index.build"):
        m = build_index(dataclasses.replace(cfg, target_recall=0.95, force=True), embedder=hashing_embedder)
    assert m["index"]["type"] == "flat" and m["index"]["tuning"] is None and m["settings"]["target_recall"] == 0.95
    assert "(flat is exact); nothing to tune" in caplog.text


def test_max_nprobe_caps_the_values_target_recall_tries(tmp_path, hashing_embedder) -> None:
    rows = [{"id": f"d{i}", "text": f"document {i} about topic{i % 7} and word{i} near word{(i * 7) % 400}"} for i in range(400)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    base = dict(paths=[str(src)], embedder="hashing:64", index_type="ivf", nlist=16, target_recall=0.999)
    capped = build_index(IndexConfig(index=str(tmp_path / "capped"), max_nprobe=2, **base), embedder=hashing_embedder)
    t = capped["index"]["tuning"]
    assert max(int(v) for v in t["tried"]) == 2 == t["value"] == capped["index"]["nprobe"] and not t["reached"]
    assert capped["settings"]["max_nprobe"] == 2
    free = build_index(IndexConfig(index=str(tmp_path / "free"), **base), embedder=hashing_embedder)
    assert max(int(v) for v in free["index"]["tuning"]["tried"]) > 2  # without the cap it goes further
    with pytest.raises(ConfigError, match="max_nprobe must be >= 0"):
        IndexConfig(max_nprobe=-1)


def test_factory_the_sharded_merge_cannot_take_fails_before_any_chunking(tmp_path, docs_jsonl, hashing_embedder) -> None:
    spy = _SpyEmbedder(hashing_embedder)
    cfg = IndexConfig(paths=[str(docs_jsonl)], index=str(tmp_path / "idx"), embedder="hashing:64", layout="sharded",
                      faiss_factory="IVF4,PQ8,Refine(Flat)")
    with pytest.raises(ConfigError, match=r"'IVF4,PQ8,Refine\(Flat\)' cannot be merged on disk.*IndexRefine") as e:
        build_index(cfg, embedder=spy)
    assert "\n" not in str(e.value) and spy.calls == 0 and not (tmp_path / "idx").exists()


def test_only_shard_files_and_ivfdata_are_verified_by_their_ends(tmp_path) -> None:
    """Loading checks the sharded layout's bulk files by their first and last 64 KiB; every other
    file, format 1's chunks.sqlite of any size included, is hashed whole, so a changed byte in its
    middle is caught."""
    from rag_pipeline.index.format import check_files, file_record

    (tmp_path / "shards").mkdir()
    for name in ("index.faiss", "index.ivfdata", "shards/part-00000.npy", "keys.sqlite"):
        (tmp_path / name).write_bytes(bytes(range(256)) * 1024)  # 256 KiB: more than both ends
    store = tmp_path / "chunks.sqlite"
    with store.open("wb") as f:  # 70 MiB, sparse: a large store costs no disk here
        f.write(b"SQLite format 3\x00")
        f.truncate(70 << 20)
    files = {name: file_record(tmp_path / name) for name in ("index.faiss", "chunks.sqlite", "index.ivfdata", "shards/part-00000.npy", "keys.sqlite")}
    assert sorted(n for n, r in files.items() if "sha256_ends" in r) == ["index.ivfdata", "shards/part-00000.npy"]
    check_files(tmp_path, {"files": files})
    with store.open("r+b") as f:
        f.seek(35 << 20)
        f.write(b"\x01")
    with pytest.raises(IndexError_, match=r"chunks\.sqlite does not match its manifest hash"):
        check_files(tmp_path, {"files": files})
    # a record of its ends, matching the changed file's ends, does not stand in for the whole
    data = store.read_bytes()
    ends = hashlib.sha256(data[: 64 << 10] + data[-(64 << 10) :]).hexdigest()
    with pytest.raises(IndexError_, match=r"chunks\.sqlite does not match its manifest hash"):
        check_files(tmp_path, {"files": {**files, "chunks.sqlite": {**files["chunks.sqlite"], "sha256_ends": ends}}})


@pytest.mark.parametrize(("dim", "n", "factory"), [
    (384, 1_500_000, "OPQ64,IVF4096_HNSW32,PQ64np"),    # what bench/bench_scale.py measured at 1M
    (384, 10_000_000, "OPQ64,IVF16384_HNSW32,PQ64np"),  # and at 10M
    (768, 5_000_000, "OPQ128,IVF16384_HNSW32,PQ128np"),  # one byte per 6 dimensions, a divisor of the dimension
    (1024, 3_000_000, "OPQ128,IVF16384_HNSW32,PQ128np"),
])
def test_scale_factory_is_the_benchmarked_recipe(dim: int, n: int, factory: str) -> None:
    from rag_pipeline.index import ann as ann

    assert ann.scale_factory(dim, n) == factory
    assert ann.scale_factory(dim, n, nlist=8192).split(",")[1] == "IVF8192_HNSW32"


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
def test_auto_above_a_million_chunks_builds_the_scale_recipe_with_reranking(tmp_path, hashing_embedder, monkeypatch, caplog, layout) -> None:
    """Where auto picks IVF (above 1M chunks) it builds OPQ + IVF-PQ with R = 20 re-ranking, not
    IVF-Flat (15 GB of lists at 10M); explicit settings (--rerank 1, --index-type ivf) win."""
    from rag_pipeline.index import ann as ann
    from rag_pipeline.index import build as index_module

    monkeypatch.setattr(index_module, "choose_index_type", lambda n: "ivf")  # as if the corpus held more than 1M chunks
    rows = [{"id": f"d{i}", "text": f"document {i} about topic{i % 7} and word{i}"} for i in range(400)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    base = dict(paths=[str(src)], embedder="hashing:64", layout=layout, nprobe=64)
    m = build_index(IndexConfig(index=str(tmp_path / "auto"), **base), embedder=hashing_embedder)
    assert m["index"]["factory"] == ann.scale_factory(64, 400) == "OPQ8,IVF10_HNSW32,PQ8np"
    assert m["index"]["type"] == "ivf" and m["index"]["rerank"] == 20 and "rerank" not in m["settings"]
    assert "pass --target-recall 0.9" in caplog.text
    r = Retriever.load(tmp_path / "auto", embedder=hashing_embedder)
    assert r.rerank == 20 and r.search("document 123 about topic4 and word123", 3)[0].chunk.doc_id == "d123"
    off = build_index(IndexConfig(index=str(tmp_path / "off"), rerank=1, **base), embedder=hashing_embedder)
    assert off["index"]["factory"] == m["index"]["factory"] and off["index"]["rerank"] == 1
    flat = build_index(IndexConfig(index=str(tmp_path / "ivf"), index_type="ivf", **base), embedder=hashing_embedder)
    assert flat["index"]["factory"].endswith(",Flat") and flat["index"]["rerank"] == 0
    assert build_index(IndexConfig(index=str(tmp_path / "auto"), **base), embedder=hashing_embedder).get("up_to_date")
    assert m["settings"]["auto_index"] == "OPQ8,IVF10_HNSW32,PQ8np rerank 20"


def test_an_index_whose_corpus_outgrew_a_million_chunks_is_rebuilt_with_the_scale_recipe(tmp_path, hashing_embedder, monkeypatch) -> None:
    """The fingerprint names the automatic recipe: an index auto built as another type (or before
    the recipe existed) is not 'up to date' once auto picks the recipe."""
    from rag_pipeline.index import build as index_module

    rows = [{"id": f"d{i}", "text": f"document {i} about topic{i % 7} and word{i}"} for i in range(400)]
    cfg = IndexConfig(paths=[str(write_jsonl(tmp_path / "d.jsonl", rows))], index=str(tmp_path / "idx"), embedder="hashing:64", nprobe=64)
    assert build_index(cfg, embedder=hashing_embedder)["index"]["type"] == "flat"
    monkeypatch.setattr(index_module, "choose_index_type", lambda n: "ivf")  # as if it had grown past 1M chunks
    m = build_index(cfg, embedder=hashing_embedder)
    assert not m.get("up_to_date") and m["index"]["factory"] == "OPQ8,IVF10_HNSW32,PQ8np" and m["index"]["rerank"] == 20


def test_a_path_that_is_not_an_index_says_what_it_is_and_where_to_point(small_index, tmp_path) -> None:
    """Only a path build-index would write (missing, empty) is told to build an index there; a file or
    another command's output is named, with the index it records when it records one."""
    idx = small_index[0]

    def refusal(path: Path) -> str:
        with pytest.raises(IndexError_) as e:
            read_manifest(path)
        return str(e.value)

    assert f"build-index PATH --index {tmp_path / 'none'}`" in refusal(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    assert f"build-index PATH --index {tmp_path / 'empty'}`" in refusal(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("mine")
    msg = refusal(tmp_path / "notes.txt")
    assert "is a file, not an index directory" in msg and f"build-index {tmp_path / 'notes.txt'} --index NEW_DIR" in msg
    folders = {
        "adapter": ("rag_pipeline.json", {"kind": "rag-generator", "base_model": "x"}, "is a trained adapter"),
        "lora": ("adapter_config.json", {"peft_type": "LORA"}, "is a LoRA adapter"),
        "report": ("metrics.json", {"schema_version": 3, "results": {}, "config": {"index": str(idx)}}, "is an evaluation report"),
        "raft": ("manifest.json", {"kind": "raft-dataset", "index": {"path": "index"}}, "is a RAFT dataset"),
        "export": ("export.json", {"kind": "rag-export"}, "is a model export"),
        "other": ("thesis.tex", {}, "no manifest.json; it holds other files"),
    }
    for name, (marker, content, words) in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / marker).write_text(json.dumps(content))
    import shutil

    shutil.copytree(idx, tmp_path / "raft" / "index")  # build-raft-dataset keeps the index it built inside its output
    for name, (_, _, words) in folders.items():
        msg = refusal(tmp_path / name)
        assert words in msg, msg
        assert f"--index {tmp_path / name}`" not in msg, msg  # never "build-index into" a folder build-index would refuse
    assert f"its index is {idx}: pass --index {idx}" in refusal(tmp_path / "report")
    assert f"its index is {tmp_path / 'raft' / 'index'}" in refusal(tmp_path / "raft")
    assert "build-index PATH --index NEW_DIR" in refusal(tmp_path / "other")
