"""Integration: ``serve`` with the real packaged models and the committed reference adapter.

The index and question of ``test_integration_ask`` (a MiniLM index over 41 real paragraphs;
conftest's ``REFERENCE_QUESTION``, a test-split question the adapter answers right): through the
official ``openai`` client, the answer must hold the gold year and its ``citations`` the gold
paragraph, streamed or not.

Streamed text is the answer: on Disfl-QA test questions whose calibrated decoding withholds the
answer, or shows it, the stream must carry exactly the non-streamed answer (it once carried the
first decode), and a withheld answer reports the tokens it cost.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import CORPUS, REPO, write_jsonl
from conftest import REFERENCE_GOLD as GOLD
from conftest import REFERENCE_GOLD_DOC as GOLD_DOC
from conftest import REFERENCE_QUESTION as QUESTION
from rag_pipeline.prompt import ABSTAIN
from rag_pipeline.answer.ask import REFERENCE_ADAPTER, Pipeline
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.serve import ServeConfig
from rag_pipeline.serve.app import create_app
from rag_pipeline.textnorm import contains_answer

from serve_helpers import ThreadServer, wait_healthy

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def reference_server(docs: list[dict], tmp_path: Path, minilm: object) -> Iterator[openai.OpenAI]:
    """The reference adapter served over an index of ``docs`` in this process; yields an OpenAI client for it."""
    index = IndexConfig(paths=[str(write_jsonl(tmp_path / "docs.jsonl", docs))], index=str(tmp_path / "idx"))
    build_index(index, embedder=minilm)
    cfg = ServeConfig(index=index.index, adapter=str(REPO / REFERENCE_ADAPTER), device="cpu", dtype="float32", max_new_tokens=24)

    def load() -> Pipeline:
        return Pipeline.load(cfg, retriever=Retriever.load(index.index, embedder=minilm))

    with ThreadServer(create_app(cfg, "smollm2-disfl-qa", "", load)) as srv:
        wait_healthy(srv.url, 300)
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=300)


def test_reference_adapter_served_through_openai_cites_the_gold_paragraph(tmp_path, minilm) -> None:
    with (CORPUS / "documents.jsonl").open() as f:
        corpus = [json.loads(line) for line in f]
    docs = [d for d in corpus[:40] if d["id"] != GOLD_DOC] + [d for d in corpus if d["id"] == GOLD_DOC]
    with reference_server(docs, tmp_path, minilm) as client:
        messages = [{"role": "user", "content": QUESTION}]
        r = client.chat.completions.create(model="smollm2-disfl-qa", messages=messages)
        answer = r.choices[0].message.content
        assert contains_answer(answer, [GOLD]) and ("[1]" in answer or "[2]" in answer), answer
        assert [c["doc_id"] for c in r.model_extra["citations"]] == [GOLD_DOC]
        assert not r.model_extra["abstained"]
        streamed = client.chat.completions.create(model="smollm2-disfl-qa", messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer


# Test-split questions and what fp32 greedy decoding did with them over STREAM_DOCS (found by trying, with the
# reference adapter calibrated with --answer-start not-refusal-word):
# (id, abstain_reason of the non-streamed answer, its first decode was a refusal re-decoded)
STREAM_QUESTIONS = [
    ("q-4e05b7b839df", None, False),  # "the spectrum of a ring [2]"
    ("q-b267e12bcc42", "calibration", False),  # "the presence of fungi [1]", margin 5.8 over the threshold 2.8: withheld
    ("q-6d1b1ec991a4", "calibration", False),  # "commoditaur flora [2]", margin 6.5: withheld
    ("q-25a13501b942", None, False),  # "lactobacilli [1]"
    ("q-1fcd20feaacd", None, False),  # "solvability of quadratic equations [1]"
]
# The first 40 paragraphs of the corpus and the full index's top 2 (hybrid) for each question above.
STREAM_DOCS = ["p-0e4d9d4cd8e2", "p-1620c5e3cd96", "p-290ff6e5995b", "p-2ed7b7eae99e", "p-65f4aeaa7b39", "p-827c9ff031e0",
               "p-a9fac3680b78", "p-ffaee1c83ab0"]


def test_streamed_text_is_the_calibrated_answer_on_real_questions(tmp_path, minilm) -> None:
    with (CORPUS / "documents.jsonl").open() as f:
        corpus = [json.loads(line) for line in f]
    docs = [d for d in corpus[:40] if d["id"] not in STREAM_DOCS] + [d for d in corpus if d["id"] in STREAM_DOCS]
    with (CORPUS / "qa" / "test.jsonl").open() as f:
        questions = {row["id"]: row["question"] for row in map(json.loads, f)}
    with reference_server(docs, tmp_path, minilm) as client:
        for qid, reason, redecoded in STREAM_QUESTIONS:
            messages = [{"role": "user", "content": questions[qid]}]
            r = client.chat.completions.create(model="smollm2-disfl-qa", messages=messages)
            answer = r.choices[0].message.content
            assert r.model_extra["abstain_reason"] == reason, (qid, answer)  # the case this question stands for
            if reason:
                assert answer == ABSTAIN and r.usage.completion_tokens >= 5 and r.usage.prompt_tokens > 200, (qid, r.usage)
            if redecoded:  # the refusal, the re-decode and (when there is one) the withheld answer all count
                assert r.usage.completion_tokens >= 15, (qid, r.usage)
            chunks = list(client.chat.completions.create(model="smollm2-disfl-qa", messages=messages, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer, qid
            last = chunks[-1].model_extra
            assert (last["abstained"], last.get("abstain_reason"), last["citations"]) == (
                r.model_extra["abstained"], reason, r.model_extra["citations"]), qid
