"""Integration: ``ask`` with the real packaged models and the committed reference adapter.

A MiniLM index over 40 real paragraphs of the bundled corpus, SmolLM2-135M-Instruct with
``adapters/smollm2-disfl-qa`` (fp32, greedy: the same answer on any CPU), one test-split
question (one the adapter answered right in the README's evaluation): the answer must hold the
gold year and cite the gold paragraph.
"""

from __future__ import annotations

import json

import pytest

from conftest import CORPUS, REPO, write_jsonl
from conftest import REFERENCE_GOLD as GOLD
from conftest import REFERENCE_GOLD_DOC as GOLD_DOC
from conftest import REFERENCE_QUESTION as QUESTION
from rag_pipeline.answer.ask import REFERENCE_ADAPTER, AskConfig, Pipeline
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.textnorm import contains_answer

pytestmark = pytest.mark.integration


def test_reference_adapter_answers_with_a_cited_gold_span(tmp_path, minilm) -> None:
    adapter = REPO / REFERENCE_ADAPTER
    meta = json.loads((adapter / "rag_pipeline.json").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["template"] == "raft-v1"
    with (CORPUS / "documents.jsonl").open() as f:
        corpus = [json.loads(line) for line in f]
    docs = [d for d in corpus[:40] if d["id"] != GOLD_DOC] + [d for d in corpus if d["id"] == GOLD_DOC]
    assert len(docs) == 41
    cfg = IndexConfig(paths=[str(write_jsonl(tmp_path / "docs.jsonl", docs))], index=str(tmp_path / "idx"))
    build_index(cfg, embedder=minilm)
    # Loading checks the adapter's recorded base weights hash against the packaged SmolLM2.
    pipe = Pipeline.load(AskConfig(index=cfg.index, adapter=str(adapter), device="cpu", dtype="float32", max_new_tokens=24),
                         retriever=Retriever.load(cfg.index, embedder=minilm))
    ans = pipe.answer(QUESTION)
    assert not ans.abstained and contains_answer(ans.answer, [GOLD]), ans.raw
    assert [c.doc_id for c in ans.citations] == [GOLD_DOC], ans.raw
