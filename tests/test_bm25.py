"""BM25 stored in the index: scores against bm25s, segments, both layouts, --update, and loading
that never reads the chunks' text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import TOPICS, write_jsonl
from rag_pipeline.errors import IndexError_
from rag_pipeline.index import bm25
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.retriever import Retriever

TEXTS = [
    "The Nile river flows north into the Mediterranean Sea; the Nile is the longest river.",
    "Paris has the Eiffel Tower, a wrought-iron tower on the Champ de Mars.",
    "Python is a programming language created by Guido van Rossum.",
    "The Moon is Earth's only natural satellite; the Moon orbits the Earth.",
    "",
    "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "Rivers and seas: the Danube river flows into the Black Sea.",
    "the of and",  # stop words only: a document of length 0
]
QUERIES = ["Which river flows into the sea?", "river river Nile", "tower in Paris", "the moon", "who wrote python",
           "zzz unknown words", "the of", "sea level mountain Himalayas river"]


def _reference_scores(texts: list[str], query: str) -> np.ndarray:
    import bm25s

    model = bm25s.BM25()  # lucene, k1 = 1.5, b = 0.75: the stored index's settings
    model.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    ids = [model.vocab_dict[t] for t in bm25.tokens(query) if t in model.vocab_dict]
    return model.get_scores(ids) if ids else np.zeros(len(texts))


def test_tokens_are_bm25s_default_tokens() -> None:
    import bm25s
    from bm25s.stopwords import STOPWORDS_EN

    assert bm25.STOPWORDS == frozenset(STOPWORDS_EN)
    for text in TEXTS + QUERIES + ["Don't stop: e-mail 3.14 naïve Ünïcode x y z 42"]:
        assert bm25.tokens(text) == bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)[0]


def _stored(tmp_path: Path, texts: list[str], segment_rows: int) -> bm25.Bm25:
    section = bm25.build(tmp_path, iter(texts), tmp_path / "scratch", segment_rows=segment_rows)
    assert not list((tmp_path / "scratch").iterdir())  # raw postings removed once weighed
    return bm25.Bm25(tmp_path, section)


@pytest.mark.parametrize("segment_rows,copies", [(1 << 18, 1), (3, 1), (1, 1), (1 << 18, 6), (20, 6)])
def test_scores_equal_bm25s_for_any_segmenting(tmp_path: Path, segment_rows: int, copies: int) -> None:
    """Every chunk's score equals bm25s's over the whole corpus, however the rows are cut into segments
    (the statistics are the corpus's); ranked best first, ties by row (the copies tie), only chunks
    holding a term; both ways of summing (dense over a segment, or over the rows found) agree."""
    texts = TEXTS * copies
    index = _stored(tmp_path, texts, segment_rows)
    for q in QUERIES:
        want = _reference_scores(texts, q)
        got = index.search(q, len(texts))
        expected = sorted(((i, float(s)) for i, s in enumerate(want) if s > 0), key=lambda x: (-x[1], x[0]))
        assert [r for r, _ in got] == [r for r, _ in expected], q
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-5), q
        assert [r for r, _ in index.search(q, 2)] == [r for r, _ in expected][:2]
        assert [r for r, _ in index.search(q, 7)] == [r for r, _ in expected][:7]


def test_a_query_without_indexed_terms_finds_nothing(tmp_path: Path) -> None:
    index = _stored(tmp_path, TEXTS, 4)
    assert index.search("the of and", 5) == [] and index.search("qwertyuiop", 5) == [] and index.search("river", 0) == []


def test_hand_computed_score(tmp_path: Path) -> None:
    """One term, three documents: Lucene's BM25 by hand."""
    texts = ["apple banana", "apple apple cherry cherry", "banana"]
    index = _stored(tmp_path, texts, 2)
    n, avgdl, df = 3, 7 / 3, 2  # lengths 2, 4 and 1
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))

    def w(tf: int, dl: int) -> float:
        return float(idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl)))

    assert index.search("apple", 3) == [(1, pytest.approx(w(2, 4), rel=1e-6)), (0, pytest.approx(w(1, 2), rel=1e-6))]


def _docs(tmp_path: Path, extra: dict[str, tuple[str, str]] | None = None) -> Path:
    topics = {**TOPICS, **(extra or {})}
    return write_jsonl(tmp_path / "docs" / "docs.jsonl", [{"id": k, "title": t, "text": x} for k, (t, x) in topics.items()])


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
def test_built_stored_and_loaded_without_reading_text(tmp_path: Path, hashing_embedder, layout: str, monkeypatch) -> None:
    """build-index writes bm25/ (hashed in the manifest); hybrid search on the loaded index gives the
    ranking of a BM25 over every chunk's text while never iterating over the chunks."""
    cfg = IndexConfig(paths=[str(_docs(tmp_path))], index=str(tmp_path / "idx"), embedder="hashing:64", layout=layout, shard_size=2)
    manifest = build_index(cfg, embedder=hashing_embedder)
    assert all(name in manifest["files"] for name in bm25.FILES)
    assert manifest["bm25"]["documents"] == manifest["corpus"]["chunks"] and manifest["settings"]["bm25"] == bm25.settings()
    r = Retriever.load(cfg.index, embedder=hashing_embedder)
    texts = [c.text for c in r.store.iter_chunks()]
    monkeypatch.setattr(type(r.store), "iter_chunks", lambda *a, **k: pytest.fail("hybrid search read every chunk"))
    for q in QUERIES:
        want = _reference_scores(texts, q)
        assert r._bm25_search(q, 50) == sorted((i for i, s in enumerate(want) if s > 0), key=lambda i: (-want[i], i))
    assert r.search("Which river flows into the Mediterranean Sea?", 1, hybrid=True)[0].chunk.doc_id == "nile"


def test_both_layouts_fuse_alike(tmp_path: Path, hashing_embedder) -> None:
    docs = _docs(tmp_path)
    hits = []
    for layout in ("sqlite", "sharded"):
        cfg = IndexConfig(paths=[str(docs)], index=str(tmp_path / layout), embedder="hashing:64", layout=layout, shard_size=2)
        build_index(cfg, embedder=hashing_embedder)
        r = Retriever.load(cfg.index, embedder=hashing_embedder)
        hits.append([[(h.chunk.id, round(h.score, 9)) for h in r.search(q, 4, hybrid=True)] for q in QUERIES])
    assert hits[0] == hits[1]


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
def test_update_stores_the_new_documents_terms(tmp_path: Path, hashing_embedder, layout: str) -> None:
    target = tmp_path / "idx"
    build_index(IndexConfig(paths=[str(_docs(tmp_path))], index=str(target), embedder="hashing:64", layout=layout), embedder=hashing_embedder)
    assert Retriever.load(target, embedder=hashing_embedder)._bm25_search("zanzibar archipelago", 5) == []
    extra = {"zanzibar": ("Zanzibar", "Zanzibar is an archipelago off the coast of Tanzania.")}
    upd = build_index(IndexConfig(paths=[str(_docs(tmp_path, extra))], index=str(target), embedder="hashing:64", layout=layout, update=True),
                      embedder=hashing_embedder)
    r = Retriever.load(target, embedder=hashing_embedder)
    assert upd["counts"]["reused"] > 0 and upd["bm25"]["documents"] == upd["corpus"]["chunks"]
    assert r.store.get_rows(r._bm25_search("zanzibar archipelago", 5))[0].doc_id == "zanzibar"


def test_an_index_without_stored_bm25_still_searches_hybrid(small_index, hashing_embedder, caplog) -> None:
    """An index built before BM25 was stored: the same fused ranking, from a BM25 built in memory, with a
    warning that says how to store it."""
    idx, _ = small_index
    new = Retriever.load(idx, embedder=hashing_embedder)
    manifest = json.loads((idx / "manifest.json").read_text())
    del manifest["bm25"]
    for name in bm25.FILES:
        del manifest["files"][name]
    (idx / "manifest.json").write_text(json.dumps(manifest))
    old = Retriever.load(idx, embedder=hashing_embedder)
    with caplog.at_level(logging.WARNING):
        assert [h.chunk.id for h in old.search("river flows into the sea", 3, hybrid=True)] == \
            [h.chunk.id for h in new.search("river flows into the sea", 3, hybrid=True)]
    assert "build-index --update" in caplog.text


@pytest.mark.parametrize("layout", ["sqlite", "sharded"])
def test_rebuilding_an_index_made_before_bm25_was_stored_reuses_its_embeddings(tmp_path: Path, hashing_embedder, layout: str,
                                                                               caplog) -> None:
    cfg = IndexConfig(paths=[str(_docs(tmp_path))], index=str(tmp_path / "idx"), embedder="hashing:64", layout=layout)
    build_index(cfg, embedder=hashing_embedder)
    path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["settings"]["bm25"], manifest["bm25"]
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO):
        again = build_index(cfg, embedder=hashing_embedder)
    assert again["counts"] == {"embedded": 0, "reused": again["corpus"]["chunks"]} and "bm25" in again
    assert "adding it, reusing every embedding" in caplog.text and not again["config"]["update"]
    assert build_index(cfg, embedder=hashing_embedder).get("up_to_date")


def test_a_long_query_is_looked_up_in_parts(tmp_path: Path) -> None:
    index = _stored(tmp_path, TEXTS, 4)
    query = " ".join(f"word{i}" for i in range(3 * bm25.TERMS_PER_QUERY)) + " Nile river"
    assert index.search(query, 3) == index.search("Nile river", 3) != []


def test_damaged_bm25_files_fail_loudly(small_index, hashing_embedder) -> None:
    idx, _ = small_index
    with (idx / bm25.SCORES_FILE).open("ab") as f:
        f.write(b"\0" * 4)
    with pytest.raises(IndexError_, match="truncated or changed"):
        Retriever.load(idx, embedder=hashing_embedder)
    (idx / bm25.SCORES_FILE).write_bytes((idx / bm25.SCORES_FILE).read_bytes()[:-4])
    (idx / bm25.TERMS_FILE).write_bytes(b"not a database" + b"\0" * ((idx / bm25.TERMS_FILE).stat().st_size - 14))
    r = Retriever.load(idx, embedder=hashing_embedder, verify=False)  # the sizes agree; only the hash would tell
    with pytest.raises(IndexError_, match="BM25 term table .* corrupt"):
        r.search("river", 2, hybrid=True)
    with pytest.raises(IndexError_, match="does not match its manifest hash"):
        Retriever.load(idx, embedder=hashing_embedder)
