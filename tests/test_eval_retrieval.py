"""Retrieval metrics against hand-computed values, and the command on a small index."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.eval_retrieval import EvalRetrievalConfig, retrieval_metrics, run
from rag_pipeline.qa import load_qa


def test_metrics_hand_computed() -> None:
    rels = [
        [True, False, False],          # rank 1
        [False, False, True],          # rank 3
        [False] * 10,                  # miss
        [False] * 6 + [True],          # rank 7
    ]
    m = retrieval_metrics(rels, precision_k=5)
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@5"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 7) / 4)
    assert m["precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 4)


def test_eval_on_small_index(small_index, hashing_embedder, tmp_path) -> None:
    from rag_pipeline.retriever import Retriever

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "Which river flows into the Mediterranean Sea?", "answer": "Nile", "doc_id": "nile"},
        {"question": "highest mountain Himalayas", "answer": ["Mount Everest"], "doc_id": "everest"},
    ])
    r = Retriever.load(idx, embedder=hashing_embedder)
    m = run(EvalRetrievalConfig(index=str(idx), qa=str(qa)), retriever=r)
    assert m["level"] == "document" and m["questions"] == 2 and m["recall@1"] == 1.0 and m["mrr@10"] == 1.0
    m = run(EvalRetrievalConfig(index=str(idx), qa=str(qa), level="answer"), retriever=r)
    assert m["level"] == "answer" and m["recall@1"] == 1.0


def test_qa_format_errors(tmp_path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "ok?", "answer": "yes"}\n{"answer": "no question"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:2: missing or non-string 'question'"):
        load_qa(p)
    p.write_text('{"question": "ok?", "answer": 3}\n')
    with pytest.raises(InputError, match="'answer' must be a string or a list"):
        load_qa(p)
    p.write_text("")
    with pytest.raises(InputError, match="holds no questions"):
        load_qa(p)
    with pytest.raises(ConfigError, match="at least 10"):
        EvalRetrievalConfig(k=5)


def test_inline_contexts_give_document_level_gold(small_index, hashing_embedder, tmp_path) -> None:
    """Records with their own passage and a sentence answer: the passage's document is the gold one."""
    import json

    from conftest import TOPICS
    from rag_pipeline.retriever import Retriever

    idx, _ = small_index
    rows = [{"question": "Which river flows into the Mediterranean Sea?", "answer": "It is the Nile, in northeastern Africa.", "context": TOPICS["nile"][1]},
            {"question": "highest mountain Himalayas", "answer": "Everest is the highest mountain.", "context": TOPICS["everest"][1]}]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(rows))
    m = run(EvalRetrievalConfig(index=str(idx), qa=str(qa)), retriever=Retriever.load(idx, embedder=hashing_embedder))
    assert m["level"] == "document" and m["questions"] == 2 and m["recall@1"] == 1.0
