"""Integration: the real packaged MiniLM on a few dozen real chunks of the bundled corpus."""

from __future__ import annotations

import itertools
import json

import pytest

from conftest import CORPUS, write_jsonl
from rag_pipeline.eval.retrieval import EvalRetrievalConfig, run
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.retriever import Retriever

pytestmark = pytest.mark.integration


def test_minilm_index_on_real_paragraphs(tmp_path, minilm) -> None:
    with (CORPUS / "documents.jsonl").open() as f:
        docs = [json.loads(line) for line in itertools.islice(f, 40)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    cfg = IndexConfig(paths=[str(src)], index=str(tmp_path / "idx"), chunk_overlap=32)
    m = build_index(cfg, embedder=minilm)
    assert m["embedder"]["id"] == "sentence-transformers/all-MiniLM-L6-v2" and m["embedder"]["dim"] == 384
    assert m["chunking"]["size"] == 254  # MiniLM's 256 minus [CLS] and [SEP]
    r = Retriever.load(cfg.index, embedder=minilm)
    # No chunk is silently truncated by the embedder: every chunk fits its max length.
    for c in r.store.iter_chunks():
        assert len(minilm.tokenizer(c.text)["input_ids"]) <= 256
    ids = {d["id"] for d in docs}
    qa = [json.loads(line) for line in (CORPUS / "qa" / "train.jsonl").open()]
    qa = [q for q in qa if q["doc_id"] in ids][:60]
    qa_path = write_jsonl(tmp_path / "qa.jsonl", qa)
    metrics = run(EvalRetrievalConfig(index=cfg.index, qa=str(qa_path)), retriever=r)
    assert metrics["questions"] == len(qa) and metrics["recall@5"] >= 0.8
