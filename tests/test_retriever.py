"""Retriever: loading checks, k above size, batch equals single, hybrid fusion."""

from __future__ import annotations

import json

import pytest

from conftest import TOPICS
from rag_pipeline.index.embed import HashingEmbedder
from rag_pipeline.errors import IndexError_
from rag_pipeline.index.retriever import Retriever


def test_search_finds_the_topic_document(small_index, hashing_embedder) -> None:
    idx, _ = small_index
    r = Retriever.load(idx, embedder=hashing_embedder)
    assert r.search("Which river flows into the Mediterranean Sea?", 1)[0].chunk.doc_id == "nile"
    assert r.search("who created the Python programming language", 2)[0].chunk.doc_id == "python"


def test_k_above_index_size_returns_what_exists(small_index, hashing_embedder) -> None:
    idx, _ = small_index
    hits = Retriever.load(idx, embedder=hashing_embedder).search("tower", 100)
    assert len(hits) == len(TOPICS) and len({h.chunk.id for h in hits}) == len(TOPICS)


def test_minus_one_ids_never_map_to_a_chunk(small_index, hashing_embedder) -> None:
    import numpy as np

    idx, _ = small_index
    r = Retriever.load(idx, embedder=hashing_embedder)
    hits = r._hits(np.array([0.9, 0.5, -1.0], np.float32), np.array([0, 1, -1]))
    assert [h.chunk.row for h in hits] == [0, 1]


def test_search_batch_equals_single_searches(small_index, hashing_embedder) -> None:
    idx, _ = small_index
    r = Retriever.load(idx, embedder=hashing_embedder)
    qs = ["Paris tower", "memory safety language", "natural satellite", "highest mountain"]
    batch = r.search_batch(qs, 3)
    for q, hits in zip(qs, batch):
        assert [(h.chunk.id, round(h.score, 5)) for h in hits] == [(h.chunk.id, round(h.score, 5)) for h in r.search(q, 3)]


def test_hybrid_fuses_bm25_and_dense(small_index, hashing_embedder) -> None:
    """Fused scores and order equal a hand computation of RRF (c = 60) over a brute-force dense
    ranking and bm25s's ranking of the chunks holding a query term; dense search alone gives other scores."""
    import bm25s
    import numpy as np

    idx, _ = small_index
    r = Retriever.load(idx, embedder=hashing_embedder)
    query = "Which river flows into the sea near the tower in Paris?"
    chunks = list(r.store.iter_chunks())
    sims = np.array([float(v) for v in hashing_embedder.encode([c.text for c in chunks]) @ hashing_embedder.encode([query])[0]])
    dense = sorted(range(len(chunks)), key=lambda i: (-sims[i], i))
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize([c.text for c in chunks], stopwords="en", show_progress=False), show_progress=False)
    scores = bm25.get_scores([bm25.vocab_dict[t] for t in bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
                              if t in bm25.vocab_dict])
    lexical = sorted((i for i in range(len(chunks)) if scores[i] > 0), key=lambda i: (-scores[i], i))
    assert 0 < len(lexical) < len(chunks)
    fused: dict[int, float] = {}
    for ranking in (dense, lexical):
        for rank, row in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1 / (60 + rank)
    expected = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:4]

    hits = r.search(query, 4, hybrid=True)
    assert [h.chunk.row for h in hits] == [row for row, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], abs=1e-12)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert [h.score for h in r.search(query, 4)] != pytest.approx([s for _, s in expected])  # dense alone differs


def test_hybrid_search_gives_the_best_dense_cosine_from_the_same_search(small_index, hashing_embedder) -> None:
    """The relevance threshold needs a cosine, and fused scores are reciprocal ranks: the best dense cosine
    comes back with the fused hits, equal to a brute-force maximum over the chunks."""
    import numpy as np

    idx, _ = small_index
    r = Retriever.load(idx, embedder=hashing_embedder)
    qs = ["Which river flows into the sea near the tower in Paris?", "memory safety language"]
    hits, best = r.search_with_cosine(qs, 2, hybrid=True)
    assert [[h.chunk.id for h in hs] for hs in hits] == [[h.chunk.id for h in hs] for hs in r.search_batch(qs, 2, hybrid=True)]
    vectors = hashing_embedder.encode([c.text for c in r.store.iter_chunks()])
    assert best == pytest.approx([float(np.max(vectors @ hashing_embedder.encode([q])[0])) for q in qs], abs=1e-5)
    assert all(b != pytest.approx(hs[0].score) for b, hs in zip(best, hits))  # not the fused score


def test_other_embedder_is_refused(small_index) -> None:
    idx, _ = small_index
    with pytest.raises(IndexError_, match="built with hashing:64"):
        Retriever.load(idx, embedder=HashingEmbedder(dim=32))
    with pytest.raises(IndexError_, match="not sentence-transformers"):
        Retriever.load(idx, expect_embedder="sentence-transformers/all-MiniLM-L6-v2")


def test_dimension_mismatch_in_manifest(small_index, hashing_embedder) -> None:
    idx, _ = small_index
    m = json.loads((idx / "manifest.json").read_text())
    m["embedder"]["dim"] = 128
    (idx / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="dimension"):
        Retriever.load(idx, embedder=hashing_embedder)


@pytest.mark.parametrize("name", ["index.faiss", "chunks.sqlite"])
def test_truncated_or_corrupt_files_are_detected(small_index, hashing_embedder, name) -> None:
    idx, _ = small_index
    path = idx / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexError_, match="truncated"):
        Retriever.load(idx, embedder=hashing_embedder)
    mid = len(data) // 2
    path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])  # same size, one byte flipped
    with pytest.raises(IndexError_, match="does not match its manifest hash"):
        Retriever.load(idx, embedder=hashing_embedder)


def test_missing_index_dir_names_the_fix(tmp_path) -> None:
    with pytest.raises(IndexError_, match="rag-pipeline build-index"):
        Retriever.load(tmp_path / "nothing")


def test_reading_an_index_does_not_import_the_build_stage(small_index: tuple) -> None:
    """Readers know the directory format from index.format, not from build-index: loading and
    searching an index, and importing every stage that reads one, leaves the build stage unimported."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys, rag_pipeline.answer.ask, rag_pipeline.serve, rag_pipeline.eval.evaluate, rag_pipeline.eval.retrieval\n"
            "from rag_pipeline.index import search as S\n"
            f"hits = S.run(S.SearchConfig(query='Eiffel tower', index={str(small_index[0])!r}, k=2, hybrid=True))\n"
            "print(hits[0].chunk.doc_id, 'rag_pipeline.index.build' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "eiffel False"
