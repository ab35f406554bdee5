"""Retrieval metrics against hand-computed values, and the command on a small index."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.eval.retrieval import EvalRetrievalConfig, retrieval_metrics, run
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
    from rag_pipeline.index.retriever import Retriever

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
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    rows = [{"question": "Which river flows into the Mediterranean Sea?", "answer": "It is the Nile, in northeastern Africa.", "context": TOPICS["nile"][1]},
            {"question": "highest mountain Himalayas", "answer": "Everest is the highest mountain.", "context": TOPICS["everest"][1]}]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(rows))
    m = run(EvalRetrievalConfig(index=str(idx), qa=str(qa)), retriever=Retriever.load(idx, embedder=hashing_embedder))
    assert m["level"] == "document" and m["questions"] == 2 and m["recall@1"] == 1.0


def test_records_left_out_are_listed_with_their_reason(small_index, hashing_embedder, tmp_path, capsys) -> None:
    """Answer level leaves out repeats and questions without an answer: --json lists each, the table names them."""
    import json

    from rag_pipeline.cli import main
    from rag_pipeline.eval.retrieval import REASONS
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    nile = {"id": "a", "question": "Which river flows into the Mediterranean Sea?", "answer": "Nile"}
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        nile, {"id": "b", "question": "highest mountain Himalayas", "answer": ["Mount Everest"]},
        {"id": "c", "question": "How old is the Moon base?", "answer": [], "answerable": False},
        {"id": "d", "question": "Who wrote Rust?", "answer": []}, nile,
    ])
    assert main(["eval-retrieval", "--index", str(idx), "--qa", str(qa), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["level"] == "answer" and m["questions"] == 2
    assert [(s["id"], s["reason"]) for s in m["skipped"]] == [("a", REASONS["duplicate"]), ("c", REASONS["unanswerable"]), ("d", REASONS["no_answer"])]
    assert m["skipped"][2]["where"] == f"{qa}:4"
    assert main(["eval-retrieval", "--index", str(idx), "--qa", str(qa)]) == 0
    assert f"left out 3 records: 1 {REASONS['duplicate']} (a); 1 {REASONS['unanswerable']} (c)" in capsys.readouterr().out
    # Document level: a question with no gold document is left out, not counted as a miss.
    qa = write_jsonl(tmp_path / "doc.jsonl", [{**nile, "doc_id": "nile"}, {"id": "e", "question": "Who wrote Rust?", "answer": "x"}])
    m = run(EvalRetrievalConfig(index=str(idx), qa=str(qa), level="document"), retriever=Retriever.load(idx, embedder=hashing_embedder))
    assert m["questions"] == 1 and m["recall@1"] == 1.0 and [s["id"] for s in m["skipped"]] == ["e"]
