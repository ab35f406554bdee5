"""Inline contexts: indexed as their own documents, or matched to an existing index's chunks."""

from __future__ import annotations

import json
from pathlib import Path

from rag_pipeline.data.contexts import attach_context_docs, context_doc_id, distinct_contexts, match_contexts
from rag_pipeline.data.raft import index_contexts
from rag_pipeline.qa import load_qa

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "marrowick_qa.json"


def test_distinct_contexts_become_documents_in_an_index(tmp_path: Path, hashing_embedder) -> None:
    from rag_pipeline.index.retriever import Retriever

    items = load_qa(EXAMPLE)
    contexts = distinct_contexts(items)
    assert len(contexts) == len({it.context for it in items}) == 8
    manifest = index_contexts(contexts, tmp_path / "idx", "hashing:64", embedder=hashing_embedder)
    assert manifest["kind"] == "rag-index" and manifest["corpus"]["documents"] == 8
    assert manifest["embedder"]["id"] == "hashing:64" and manifest["chunking"]["overlap"] == 32  # build-index's defaults
    r = Retriever.load(tmp_path / "idx", embedder=hashing_embedder)
    by_doc = r.store.chunks_of_docs([c.doc_id for c in contexts])
    assert set(by_doc) == {c.doc_id for c in contexts}
    for c in contexts:  # each document's chunks tile its context, first to last
        chunks = by_doc[c.doc_id]
        assert all(ch.text in c.text for ch in chunks)
        assert c.text.startswith(chunks[0].text) and c.text.rstrip(".").endswith(chunks[-1].text.rstrip("."))  # the fake tokenizer drops end punctuation
    for it in attach_context_docs(items):
        assert it.doc_id == context_doc_id(it.context) and it.doc_id in by_doc


def test_contexts_are_matched_to_an_existing_index_and_missing_ones_reported(tmp_path: Path, hashing_embedder) -> None:
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.retriever import Retriever

    rows = json.loads(EXAMPLE.read_text())
    kept = [r for r in rows if "puffin" not in r["context"]]  # the index lacks one passage
    # ... and holds another inside a longer document, whitespace changed.
    town = next(r["context"] for r in rows if r["context"].startswith("The only town"))
    docs = [{"id": f"d{i}", "text": r["context"]} for i, r in enumerate({r["context"]: r for r in kept if r["context"] != town}.values())]
    docs.append({"id": "long", "text": "An older chapter about the harbour.\n\n" + town.replace(". ", ".  ") + "\n\nMore about nets."})
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    build_index(IndexConfig(paths=[str(tmp_path / "docs.jsonl")], index=str(tmp_path / "idx"), embedder="hashing:64"), embedder=hashing_embedder)
    r = Retriever.load(tmp_path / "idx", embedder=hashing_embedder)
    contexts = distinct_contexts(load_qa(EXAMPLE))
    found = match_contexts(r, contexts)
    missing = [c.text for c in contexts if not found[c.text]]
    assert len(missing) == 1 and "puffin" in missing[0]
    town_chunks = found[next(c.text for c in contexts if c.text.startswith("The only town"))]
    assert {c.doc_id for c in town_chunks} == {"long"}
    doc_of = {d["text"]: d["id"] for d in docs}
    for c in contexts:
        if found[c.text] and not c.text.startswith("The only town"):
            assert {ch.doc_id for ch in found[c.text]} == {doc_of[c.text]}  # the passage's own document, all its chunks
            assert len(found[c.text]) == len(r.store.chunks_of_docs([doc_of[c.text]])[doc_of[c.text]])
