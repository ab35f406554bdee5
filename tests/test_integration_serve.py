"""Integration: ``serve`` with the real packaged models and the committed reference adapter.

The index and question of ``test_integration_ask`` (a MiniLM index over 41 real paragraphs, a
test-split question the adapter answers right): through the official ``openai`` client, the
answer must hold the gold year and its ``citations`` the gold paragraph, streamed or not.
"""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from conftest import CORPUS, REPO, write_jsonl  # noqa: E402
from rag_pipeline.ask import REFERENCE_ADAPTER, Pipeline  # noqa: E402
from rag_pipeline.index import IndexConfig, build_index  # noqa: E402
from rag_pipeline.retriever import Retriever  # noqa: E402
from rag_pipeline.serve import ServeConfig, ask_config, limits_for  # noqa: E402
from rag_pipeline.serve.app import create_app  # noqa: E402
from rag_pipeline.textnorm import contains_answer  # noqa: E402

from serve_helpers import ThreadServer, wait_healthy  # noqa: E402
from test_integration_ask import GOLD, GOLD_DOC, QUESTION  # noqa: E402

pytestmark = pytest.mark.integration


def test_reference_adapter_served_through_openai_cites_the_gold_paragraph(tmp_path, minilm) -> None:
    with (CORPUS / "documents.jsonl").open() as f:
        corpus = [json.loads(line) for line in f]
    docs = [d for d in corpus[:40] if d["id"] != GOLD_DOC] + [d for d in corpus if d["id"] == GOLD_DOC]
    index = IndexConfig(paths=[str(write_jsonl(tmp_path / "docs.jsonl", docs))], index=str(tmp_path / "idx"))
    build_index(index, embedder=minilm)
    cfg = ServeConfig(index=index.index, adapter=str(REPO / REFERENCE_ADAPTER), device="cpu", dtype="float32", max_new_tokens=24)

    def load() -> Pipeline:
        return Pipeline.load(ask_config(cfg), retriever=Retriever.load(index.index, embedder=minilm))

    with ThreadServer(create_app(limits_for(cfg, "smollm2-disfl-qa", ""), load)) as srv:
        wait_healthy(srv.url, 300)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": QUESTION}]
        r = client.chat.completions.create(model="smollm2-disfl-qa", messages=messages)
        answer = r.choices[0].message.content
        assert contains_answer(answer, [GOLD]) and ("[1]" in answer or "[2]" in answer), answer
        assert [c["doc_id"] for c in r.model_extra["citations"]] == [GOLD_DOC]
        assert not r.model_extra["abstained"]
        streamed = client.chat.completions.create(model="smollm2-disfl-qa", messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
