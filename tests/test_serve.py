"""``serve``: the real server, talked to as clients see it (the ``openai`` package and ``httpx``).

A subprocess runs ``rag-pipeline serve`` on the tiny index and tiny Llama + LoRA adapter of
conftest's ``env`` (API key from ``RAG_PIPELINE_API_KEY``), stopped by its PID. Tests that need to
hold the batch worker busy, make it fail, or delay loading run the same application in a
thread (``uvicorn.Server``) around a wrapped pipeline.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import QUESTIONS  # questions the `env` fixture's topic index answers
from rag_pipeline.answer.ask import ABSTAIN, Decoding, Pipeline
from rag_pipeline.cli import main as cli_main
from rag_pipeline.errors import ConfigError
from rag_pipeline.serve import ServeConfig
from rag_pipeline.serve.app import create_app
from rag_pipeline.serve.batcher import BatchQueue, BatchWorker, Job

from serve_helpers import (
    FailingPipeline, GatedPipeline, ThreadServer, start_cli_server, stop_process, wait_healthy,
)

KEY = "test-key-123"
MODEL = "adapter"  # the served id: the adapter directory's name


def serve_cfg(env: dict, **kw) -> ServeConfig:
    base = {"index": str(env["index"]), "adapter": str(env["adapter"]), "device": "cpu", "dtype": "float32",
            "max_new_tokens": 8, "min_score": -1.0, "answer_check": "off"}  # the tiny model's text is junk
    return ServeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def server(env: dict, tmp_path_factory: pytest.TempPathFactory):
    """``rag-pipeline serve`` in a subprocess, API key from the environment; yields (base URL, log path)."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--index", str(env["index"]), "--adapter", str(env["adapter"]), "--device", "cpu", "--dtype", "float32",
            "--max-new-tokens", "8", "--min-score", "-1", "--batch-wait-ms", "300", "--max-question-chars", "200",
            "--max-body-bytes", "4096", "--answer-check", "off"]  # the tiny model writes junk
    proc, url = start_cli_server(args, env={"RAG_PIPELINE_API_KEY": KEY}, log_path=log_path)
    try:
        wait_healthy(url, proc=proc)
        yield url, log_path
    finally:
        status = stop_process(proc)  # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal
        assert status == -signal.SIGTERM and "stopped after answering" in log_path.read_text(), log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(env: dict) -> Pipeline:
    """The same pipeline in this process: what ``ask`` answers, to compare the server with."""
    return Pipeline.load(serve_cfg(env))


def ask(client: openai.OpenAI, question: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], **kw)


# ------------------------------------------------------------------------------ the API, through openai


def test_chat_completion_through_the_openai_client_answers_like_ask(client: openai.OpenAI, reference: Pipeline) -> None:
    question = QUESTIONS[2]
    r = client.chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "ignored"}, {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"}, {"role": "user", "content": question}])
    expected = reference.answer(question)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.answer and expected.raw  # the generator ran; the last user message was asked
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 50 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["citations"] == [
        {"number": c.n, "doc_id": c.doc_id, "title": c.title, "source": c.source, "score": c.score, "snippet": c.snippet}
        for c in expected.citations]
    assert r.model_extra["abstained"] is False


def test_streaming_sends_tokens_as_they_are_generated(client: openai.OpenAI, reference: Pipeline) -> None:
    question = QUESTIONS[0]
    chunks = list(ask(client, question, stream=True, max_tokens=16))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 3  # token by token, not the whole answer at the end
    expected = reference.answer_batch([question], decoding=Decoding(16))[0].answer
    assert "".join(contents) == ask(client, question, max_tokens=16).choices[0].message.content == expected
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length") and last.model_extra["citations"] == []
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 1


def test_stream_usage_when_asked(server) -> None:
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": QUESTIONS[1]}]}
    r = httpx.post(f"{server[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1


def test_max_tokens_temperature_and_seed_are_honoured(client: openai.OpenAI) -> None:
    one = ask(client, QUESTIONS[3], max_tokens=1)
    assert one.usage.completion_tokens == 1 and one.choices[0].finish_reason == "length"
    greedy = ask(client, QUESTIONS[3], max_tokens=8).choices[0].message.content
    assert ask(client, QUESTIONS[3], max_tokens=8, temperature=0).choices[0].message.content == greedy
    sampled = [ask(client, QUESTIONS[3], max_tokens=8, temperature=1.5, seed=s).choices[0].message.content for s in range(1, 5)]
    assert any(s != greedy for s in sampled)  # sampling happened
    assert ask(client, QUESTIONS[3], max_tokens=8, temperature=1.5, seed=1).choices[0].message.content == sampled[0]
    # a temperature so small that logits / t overflow (NaN probabilities) was a 500: greedy, as 0 is, and said so
    tiny = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[3]}],
                                                            max_tokens=8, temperature=1e-40)
    assert tiny.parse().choices[0].message.content == greedy and "answered greedily" in tiny.headers["warning"]


def test_models_lists_the_served_model_and_others_are_404(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and MODEL in e.value.body["message"]


def test_search_returns_the_retrievers_hits(server, reference: Pipeline) -> None:
    r = httpx.post(f"{server[0]}/v1/search", json={"query": "highest mountain Himalayas", "k": 3},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200
    # no "hybrid" in the request: the server's own setting, as its answers retrieve
    expected = reference.retriever.search_batch(["highest mountain Himalayas"], 3, reference.cfg.hybrid)[0]
    assert [(h["chunk_id"], h["rank"], h["doc_id"]) for h in r.json()["hits"]] == [(h.chunk.id, h.rank, h.chunk.doc_id) for h in expected]
    assert [h["score"] for h in r.json()["hits"]] == pytest.approx([h.score for h in expected])
    assert r.json()["hits"][0]["doc_id"] == "everest" and "Himalayas" in r.json()["hits"][0]["text"]
    dense = httpx.post(f"{server[0]}/v1/search", json={"query": "highest mountain Himalayas", "k": 3, "hybrid": False},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()["hits"]
    assert [h["score"] for h in dense] == pytest.approx([h.score for h in reference.retriever.search_batch(["highest mountain Himalayas"], 3, False)[0]])
    assert reference.cfg.hybrid and [h["score"] for h in dense] != pytest.approx([h["score"] for h in r.json()["hits"]])


def test_health_reports_ok_and_the_model(server) -> None:
    r = httpx.get(f"{server[0]}/health", timeout=10)  # no key needed
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"] == MODEL


# ------------------------------------------------------------------------------ auth and limits


def test_api_key_from_the_environment_is_required(server) -> None:
    url = f"{server[0]}/v1"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{url}/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_without_a_key_no_authentication_is_asked(env: dict, reference: Pipeline) -> None:
    with ThreadServer(create_app(serve_cfg(env), MODEL, "", lambda: reference)) as srv:
        wait_healthy(srv.url, 30)
        r = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="anything", max_retries=0).models.list()
        assert [m.id for m in r] == [MODEL]
        assert httpx.get(f"{srv.url}/v1/models").status_code == 200


def test_body_over_the_limit_is_413_declared_or_chunked(server) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{server[0]}/v1/chat/completions", json=big, headers=headers)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
    payload = json.dumps(big).encode()

    def chunks():  # no Content-Length: Transfer-Encoding chunked
        for i in range(0, len(payload), 1000):
            yield payload[i:i + 1000]

    r = httpx.post(f"{server[0]}/v1/chat/completions", content=chunks(), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body,param,words", [
    ({"messages": [{"role": "user", "content": "q" * 201}]}, "messages", "201 characters"),
    ({"messages": [{"role": "system", "content": "no user message"}]}, "messages", "no user message"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages", "empty"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, "max_tokens", "limit of 256"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n", "less than or equal to 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "seed": 2**64}, "seed", "less than or equal to"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, "seed", "greater than or equal to 0"),
])
def test_bad_requests_are_422_with_a_clear_message(server, body: dict, param: str, words: str) -> None:
    r = httpx.post(f"{server[0]}/v1/chat/completions", json={"model": MODEL, **body}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param) and words in err["message"]


def test_long_question_through_openai_is_unprocessable(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as e:
        ask(client, "why " * 60)
    assert e.value.body["code"] == "question_too_long"


def test_unknown_route_and_method_answer_json_errors(server) -> None:
    r = httpx.get(f"{server[0]}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{server[0]}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["message"]


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_requests_share_decode_steps_and_equal_one_at_a_time(client: openai.OpenAI, server) -> None:
    """Continuous batching (the default): each request is its own answer call, and their rows decode together."""
    questions = QUESTIONS * 2  # 12 requests: duplicates too, they must each get their own row's answer
    before = httpx.get(f"{server[0]}/health").json()["batches"]
    with cf.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(lambda q: ask(client, q, max_tokens=8).choices[0].message.content, questions))
    after = httpx.get(f"{server[0]}/health").json()["batches"]
    alone = [ask(client, q, max_tokens=8).choices[0].message.content for q in questions]
    assert together == alone and all(together)
    assert after["requests"] - before["requests"] == len(questions) == after["count"] - before["count"]
    # one at a time, each answer would take its own 7 steps after its prompt (8 tokens: the tiny model never stops early)
    assert after["decode_steps"] - before["decode_steps"] < 7 * len(questions)  # so rows shared steps


def test_batching_at_arrival_answers_concurrent_requests_in_shared_batches(env: dict) -> None:
    args = ["--index", str(env["index"]), "--adapter", str(env["adapter"]), "--device", "cpu", "--dtype", "float32",
            "--max-new-tokens", "8", "--min-score", "-1", "--batch-wait-ms", "300", "--answer-check", "off", "--batching", "arrival"]
    proc, url = start_cli_server(args)
    try:
        wait_healthy(url, proc=proc)
        arrival = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        questions = QUESTIONS * 2
        with cf.ThreadPoolExecutor(len(questions)) as pool:
            together = list(pool.map(lambda q: ask(arrival, q, max_tokens=8).choices[0].message.content, questions))
        batches = httpx.get(f"{url}/health").json()["batches"]
        assert together == [ask(arrival, q, max_tokens=8).choices[0].message.content for q in questions]
        assert batches["count"] < len(questions) and batches["largest"] > 1 and "decode_steps" not in batches
    finally:
        stop_process(proc)


def test_concurrent_streams_each_get_their_own_tokens(client: openai.OpenAI) -> None:
    def stream(q: str) -> str:
        return "".join(c.choices[0].delta.content or "" for c in ask(client, q, stream=True, max_tokens=8) if c.choices)

    with cf.ThreadPoolExecutor(4) as pool:
        streamed = list(pool.map(stream, QUESTIONS[:4]))
    assert streamed == [ask(client, q, max_tokens=8).choices[0].message.content for q in QUESTIONS[:4]]


@pytest.fixture
def gated(env: dict, reference: Pipeline):
    """A server in a thread whose worker waits at a gate in answer_batch; 1 per batch, queue of 2."""
    pipe = GatedPipeline(reference)
    cfg = serve_cfg(env, max_batch=1, max_queue=2, batch_wait_ms=0, request_timeout_s=30)
    with ThreadServer(create_app(cfg, MODEL, "", lambda: pipe)) as srv:
        wait_healthy(srv.url, 30)
        yield srv, pipe
        pipe.gate.set()


def _post(url: str, question: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": question}]},
                      timeout=timeout)


def _pending(url: str) -> int:
    return httpx.get(f"{url}/health").json()["queue"]["pending"]


def _wait(cond, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_full_queue_answers_503_with_retry_after_quickly(gated) -> None:
    srv, pipe = gated
    pipe.gate.clear()
    with cf.ThreadPoolExecutor(3) as pool:
        busy = pool.submit(_post, srv.url, QUESTIONS[0])
        assert pipe.entered.wait(15)  # the worker holds the first request
        queued = [pool.submit(_post, srv.url, q) for q in QUESTIONS[1:3]]
        _wait(lambda: _pending(srv.url) == 2)
        t0 = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTIONS[3]}])
        assert time.monotonic() - t0 < 2
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "queue_full"
        pipe.gate.set()
        assert [f.result().status_code for f in (busy, *queued)] == [200, 200, 200]
    assert QUESTIONS[3] not in [q for b in pipe.batches for q in b]


def test_a_client_that_disconnects_frees_its_slot_before_generation(gated) -> None:
    srv, pipe = gated
    pipe.gate.clear()
    with cf.ThreadPoolExecutor(4) as pool:
        busy = pool.submit(_post, srv.url, QUESTIONS[0])
        assert pipe.entered.wait(15)
        gone = [pool.submit(_post, srv.url, q, 0.5) for q in ("who left early?", "who else left?")]  # clients give up after 0.5 s
        for f in gone:
            with pytest.raises(httpx.ReadTimeout):
                f.result()
        _wait(lambda: _pending(srv.url) == 0)  # both slots freed while the worker is still busy
        stays = pool.submit(_post, srv.url, QUESTIONS[1])
        _wait(lambda: _pending(srv.url) == 1)
        pipe.gate.set()
        assert busy.result().status_code == 200 and stays.result().status_code == 200
    asked = [q for b in pipe.batches for q in b]
    assert asked == [QUESTIONS[0], QUESTIONS[1]]  # the disconnected requests never reached generation


def test_request_timeout_is_504_and_drops_the_job(env: dict, reference: Pipeline) -> None:
    pipe = GatedPipeline(reference)
    cfg = serve_cfg(env, max_batch=1, max_queue=4, batch_wait_ms=0, request_timeout_s=1)
    with ThreadServer(create_app(cfg, MODEL, "", lambda: pipe)) as srv:
        wait_healthy(srv.url, 30)
        pipe.gate.clear()
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, srv.url, QUESTIONS[0])
            assert pipe.entered.wait(15)
            late = _post(srv.url, QUESTIONS[1])
            assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
            assert _pending(srv.url) == 0
            pipe.gate.set()
            assert first.result().status_code == 504  # it waited at the gate for longer than the timeout too
        assert [q for b in pipe.batches for q in b] == [QUESTIONS[0]]


# ------------------------------------------------------------------------------ lifecycle and errors


def test_health_is_503_until_the_models_are_loaded(env: dict, reference: Pipeline) -> None:
    release = threading.Event()

    def slow_load():
        assert release.wait(30)
        return reference

    with ThreadServer(create_app(serve_cfg(env), MODEL, "", slow_load)) as srv:
        r = httpx.get(f"{srv.url}/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = _post(srv.url, QUESTIONS[0])
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading" and r.headers["retry-after"]
        release.set()
        assert wait_healthy(srv.url, 30)["status"] == "ok"
        assert _post(srv.url, QUESTIONS[0]).status_code == 200


def test_a_failed_load_is_reported_and_stops_the_server(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    adapter = tmp_path / "not-an-adapter"
    adapter.mkdir()  # exists (passes the early check) but has no rag_pipeline.json: loading fails
    status = cli_main(["serve", "--index", str(env["index"]), "--adapter", str(adapter), "--device", "cpu", "--port", str(_free())])
    assert status == 2 and "rag_pipeline.json" in capsys.readouterr().err


def _free() -> int:
    from serve_helpers import free_port

    return free_port()


def test_internal_errors_never_leak_a_stack_trace(env: dict, reference: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    with ThreadServer(create_app(serve_cfg(env), MODEL, "", lambda: FailingPipeline(reference))) as srv:
        wait_healthy(srv.url, 30)
        for stream in (False, True):
            r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": QUESTIONS[0]}]})
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert "Traceback" not in r.text and "secret" not in r.text and ".py" not in r.text
        assert httpx.get(f"{srv.url}/health").status_code == 200  # the worker survived
    assert any(rec.exc_info and FailingPipeline.SECRET in str(rec.exc_info[1]) for rec in caplog.records)  # logged on the server


def test_access_log_is_one_json_line_per_request(env: dict, reference: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rag_pipeline.serve.access")
    with ThreadServer(create_app(serve_cfg(env), MODEL, "", lambda: reference)) as srv:
        wait_healthy(srv.url, 30)
        caplog.clear()
        ok = _post(srv.url, QUESTIONS[0])
        mine = httpx.get(f"{srv.url}/v1/models", headers={"X-Request-Id": "client-id-7"})
        bad = httpx.post(f"{srv.url}/v1/search", json={"query": ""})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rag_pipeline.serve.access"]
    # wait_healthy's last probe may be logged after caplog.clear(): the line is written once the response has gone out
    lines = [x for x in lines if x["path"] != "/health"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/chat/completions", 200), ("GET", "/v1/models", 200), ("POST", "/v1/search", 422)]
    assert all(set(x) == {"method", "path", "status", "latency_ms", "request_id"} and x["latency_ms"] >= 0 for x in lines)
    assert [x["request_id"] for x in lines] == [ok.headers["x-request-id"], "client-id-7", bad.headers["x-request-id"]]
    assert ok.json()["id"] == f"chatcmpl-{ok.headers['x-request-id']}"


def test_threshold_abstention_is_marked(env: dict) -> None:
    pipe = Pipeline.load(serve_cfg(env, min_score=0.99))
    with ThreadServer(create_app(serve_cfg(env), MODEL, "", lambda: pipe)) as srv:
        wait_healthy(srv.url, 30)
        r = _post(srv.url, "zebra quantum saxophone").json()
        assert r["choices"][0]["message"]["content"] == ABSTAIN and r["abstained"] is True
        assert r["abstain_reason"] == "threshold" and r["citations"] == [] and r["usage"]["completion_tokens"] == 0


# ------------------------------------------------------------------------------ streamed text is the answer


def _stream_text(url: str, question: str, **kw) -> tuple[str, dict]:
    """A streamed answer through the openai client: (the text of its deltas, its last chunk's extra fields)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
    chunks = list(ask(client, question, stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].model_extra


@pytest.fixture(scope="module")
def calibrated(env: dict, reference: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The tiny adapter with a calibrated abstention whose threshold withholds about half of QUESTIONS' answers."""
    import shutil

    margins = sorted(a.margin for a in reference.answer_batch(QUESTIONS, margins=True))
    adapter = tmp_path_factory.mktemp("calibrated") / "adapter"
    shutil.copytree(env["adapter"], adapter)
    meta = json.loads((adapter / "rag_pipeline.json").read_text())
    meta["abstention"] = {"free": {"threshold": (margins[2] + margins[3]) / 2}}
    (adapter / "rag_pipeline.json").write_text(json.dumps(meta))
    return Pipeline.load(serve_cfg(env, adapter=str(adapter)))


def test_a_calibrated_answer_streams_exactly_what_the_server_answers(calibrated: Pipeline) -> None:
    """The stream once carried the first greedy decode while the answer was withheld (and said abstained), and
    a withheld answer reported usage 0/0/0 after generating."""
    assert calibrated.calibration is not None
    with ThreadServer(create_app(serve_cfg({"index": "-", "adapter": "-"}), MODEL, "", lambda: calibrated)) as srv:
        wait_healthy(srv.url, 30)
        reasons = []
        for q in QUESTIONS:
            plain = _post(srv.url, q).json()
            text, last = _stream_text(srv.url, q)
            assert text == plain["choices"][0]["message"]["content"], q
            assert (last["abstained"], last.get("abstain_reason")) == (plain["abstained"], plain["abstain_reason"])
            reasons.append(plain["abstain_reason"])
            assert plain["usage"]["prompt_tokens"] > 50 and 1 <= plain["usage"]["completion_tokens"] <= 8, plain["usage"]
        assert "calibration" in reasons and None in reasons, reasons  # both kinds of answer were streamed
        sampled = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 1.5, "seed": 3})
        assert sampled.headers["warning"] == '299 rag-pipeline "temperature is ignored: this server\'s calibrated abstention answers greedily"'
        assert sampled.json()["choices"][0]["message"]["content"] == _post(srv.url, QUESTIONS[0]).json()["choices"][0]["message"]["content"]


def test_a_summary_calibration_applies_to_summary_requests_and_streams_what_they_answer(env: dict, reference: Pipeline,
                                                                                        tmp_path: Path) -> None:
    """An adapter calibrated for summaries only: summary requests get the threshold (streamed whole, equal to the plain
    answer, temperature ignored), short-answer requests do not."""
    import shutil

    summary = Decoding(60, task="summary")
    margins = sorted(a.margin for a in reference.answer_batch(QUESTIONS, margins=True, decoding=summary))
    adapter = tmp_path / "adapter"
    shutil.copytree(env["adapter"], adapter)
    meta = json.loads((adapter / "rag_pipeline.json").read_text())
    meta["abstention"] = {"summary": {"threshold": (margins[2] + margins[3]) / 2}}
    (adapter / "rag_pipeline.json").write_text(json.dumps(meta))
    pipe = Pipeline.load(serve_cfg(env, adapter=str(adapter)))
    assert pipe.calibration is None and pipe.calibration_for("summary") is not None
    with ThreadServer(create_app(serve_cfg({"index": "-", "adapter": "-"}), MODEL, "", lambda: pipe)) as srv:
        wait_healthy(srv.url, 30)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
        reasons = []
        for q in QUESTIONS:
            plain = ask(client, q, max_tokens=60, extra_body={"task": "summary"})
            text, last = _stream_text(srv.url, q, max_tokens=60, extra_body={"task": "summary"})
            assert text == plain.choices[0].message.content, q
            assert (last["abstained"], last.get("abstain_reason")) == (plain.model_extra["abstained"], plain.model_extra["abstain_reason"])
            reasons.append(plain.model_extra["abstain_reason"])
        assert "calibration" in reasons and None in reasons, reasons
        sampled = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 1.5, "task": "summary", "max_tokens": 60})
        assert "temperature is ignored" in sampled.headers["warning"]
        short = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 1.5, "seed": 3})
        assert "warning" not in short.headers and short.json()["abstain_reason"] != "calibration"


def _scripted(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, reply: str, log: list) -> None:
    """Replace the generator: it hands ``reply``'s tokens to ``on_token`` one by one (logged), then returns it."""
    ids = pipe.tokenizer(reply, add_special_tokens=False)["input_ids"]

    def gen(texts, docs, margins=False, grounded=False, decoding=None, on_token=None, counts=None, questions=None):
        for r in range(len(texts)):
            for t in ids:
                log.append(("token", t))
                if on_token is not None:
                    on_token(r, t)
            if counts is not None:
                counts[r].add(100, ids + [pipe.tokenizer.eos_token_id], pipe.tokenizer.eos_token_id)
        return [(pipe.tokenizer.decode(ids, skip_special_tokens=True).strip(), None)] * len(texts)

    monkeypatch.setattr(pipe, "_generate", gen)


@pytest.mark.parametrize("reply,live", [
    ("The papers don't contain the answer.", False),  # a refusal: the answer is the abstention sentence, held to the end
    ("In 1066, after the battle of Hastings [1]", True),  # cannot become a refusal: streamed while decoded
    ("Paris [1]   ", False),  # one word may still go on "don't contain the answer"; trailing spaces are stripped
])
def test_streamed_pieces_join_to_the_final_answer(reference: Pipeline, monkeypatch: pytest.MonkeyPatch, reply: str, live: bool) -> None:
    log: list = []
    _scripted(reference, monkeypatch, reply, log)
    usage = {}
    ans = reference.answer_batch([QUESTIONS[0]], on_text=lambda i, t: log.append(("text", i, t)),
                                 on_usage=lambda i, u: usage.setdefault(i, u))[0]
    pieces = [e[2] for e in log if e[0] == "text"]
    assert "".join(pieces) == ans.answer and all(e[1] == 0 for e in log if e[0] == "text")
    last_token = max(n for n, e in enumerate(log) if e[0] == "token")
    assert any(e[0] == "text" for e in log[:last_token]) is live, log
    assert ans.answer == (ABSTAIN if "papers" in reply else reply.strip())
    assert usage[0].prompt_tokens == 100 and usage[0].completion_tokens == len(log) - len(pieces) + 1


@pytest.mark.parametrize("text", [
    ABSTAIN, "The papers don't contain the answer.", "The provided documents do not contain the answer to this question [1].",
    "[1] The manuscripts don't contain the answer.", "I cannot answer that.", "In 1066 [1]", "The processes [1]",
    "lactobacilli [1]", "The official documents don't contain the answer.",
])
def test_a_text_is_held_back_while_it_may_become_a_refusal(text: str) -> None:
    """Holding back decides on prefixes: each prefix of a refusal must be held, and once a prefix is let go no
    longer one may become a refusal (the streamed text would then not be the answer)."""
    from rag_pipeline.metrics import is_abstention, may_become_abstention

    held = [may_become_abstention(text[:n]) for n in range(1, len(text) + 1)]
    assert held == sorted(held, reverse=True), held  # True ... True False ... False
    if is_abstention(text):
        assert all(held)
    assert not may_become_abstention("In 1066") and may_become_abstention("The documents")


def test_stop_cuts_the_answer_streamed_or_not(client: openai.OpenAI) -> None:
    question = QUESTIONS[4]
    whole = ask(client, question, max_tokens=16).choices[0].message.content
    stop = whole[6:9]
    expected = whole[:whole.find(stop)]
    for stops in (stop, [stop, "never in the answer"]):
        cut = ask(client, question, max_tokens=16, stop=stops)
        assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
        streamed = list(ask(client, question, max_tokens=16, stop=stops, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
        assert streamed[-1].choices[0].finish_reason == "stop"
    assert ask(client, question, max_tokens=16, stop=["never in the answer"]).choices[0].message.content == whole


@pytest.mark.parametrize("stops,seen,expected", [
    (("abc", "b"), ["x", "x", "a", "b", "c"], "xxa"),  # the stop that ends first cuts, as a streaming reader meets it
    (("\n\n",), ["Hello", " world", "\n", "x", "\n\n", "y"], "Hello world\nx"),
    (("END",), ["The E", "ND"], "The "),
    (("END",), ["The E", "nd"], "The End"),
])
def test_stop_text_never_streams_what_the_stop_takes_back(stops: tuple, seen: list, expected: str) -> None:
    from rag_pipeline.serve.batcher import StopText

    st = StopText(stops)
    streamed = "".join(st.feed(piece) for piece in seen)
    rest, text, cut = st.finish("".join(seen))
    assert streamed + rest == text == expected and expected.startswith(streamed)
    assert cut == (expected != "".join(seen))


# ------------------------------------------------------------------------------ config and queue units


@pytest.mark.parametrize("kw,match", [
    ({"port": 0}, "port is 0"), ({"max_batch": 0}, "max_batch is 0"), ({"max_queue": 0}, "max_queue"),
    ({"adapter": "a", "no_adapter": True}, "contradict"), ({"max_tokens_limit": 4}, "max_tokens_limit"),
    ({"min_score": 2.0}, "min_score"), ({"request_timeout_s": 0}, "request_timeout_s"),
])
def test_serve_config_names_the_bad_field(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServeConfig(**kw)


def test_serve_binds_loopback_by_default_and_lists_its_flags(capsys: pytest.CaptureFixture) -> None:
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--index", "--adapter", "--host", "--port", "--api-key", "--max-batch", "--batch-wait-ms", "--max-queue",
                 "--request-timeout-s", "--max-body-bytes", "--max-question-chars"):
        assert flag in out


def test_batch_queue_is_bounded_and_cancel_frees_a_slot() -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        jobs = [Job("answer", f"q{i}", ("answer",), loop, asyncio.Queue()) for i in range(3)]
        q = BatchQueue(2)
        assert q.put(jobs[0]) and q.put(jobs[1]) and not q.put(jobs[2])
        assert q.cancel(jobs[0]) and jobs[0].cancelled and len(q) == 1
        assert q.put(jobs[2])
        assert q.take(8, 0.0) == [jobs[1], jobs[2]]
        assert not q.cancel(jobs[1])  # already taken: not in the queue any more
    finally:
        loop.close()


def test_a_request_answered_alone_carries_its_cancel_check_and_a_cancelled_one_ends_quietly(caplog) -> None:
    """Continuous batching answers each request alone under ``cancel_scope``: the engine's rows read the job's
    cancelled flag, and a decode stopped for a hung-up client is neither an error to it nor an exception in the log."""
    import asyncio

    from rag_pipeline import generator as G

    class Hangup:
        checks: list[bool] = []

        def answer_batch(self, questions, decoding=None, on_text=None, on_usage=None):
            spec = G.RowSpec([1, 2], 4, 0)  # what generate_answers builds for the engine
            self.checks.append(spec.cancelled())
            job.cancelled = True  # the client hangs up mid-answer
            self.checks.append(spec.cancelled())
            raise G.DecodeCancelled("the answer was cancelled by its caller")

    loop = asyncio.new_event_loop()
    try:
        job = Job("answer", "who?", ("answer", Decoding(8)), loop, asyncio.Queue())
        pipe = Hangup()
        with caplog.at_level(logging.INFO, logger="rag_pipeline.serve.batcher"):
            BatchWorker(pipe, BatchQueue(2), max_batch=1, wait_s=0.0)._process(job.key, [job])
        loop.run_until_complete(asyncio.sleep(0))
        assert pipe.checks == [False, True] and job.events.empty()
        assert "client went away" in caplog.text and not any(r.exc_info for r in caplog.records)
    finally:
        loop.close()


def test_serve_answers_with_its_config_and_its_batch_is_max_batch(tmp_path: Path) -> None:
    """ServeConfig is the answering settings ask uses (one type: the same defaults and checks), plus the server's;
    decoding is each request's, so the decoding settings are not serve's to set."""
    from rag_pipeline.answer.settings import AnswerSettings
    from rag_pipeline.config import build_config

    c = ServeConfig(k=3, max_batch=4, hybrid=False, grounded=True, abstain_bias=1.5)
    assert isinstance(c, AnswerSettings) and (c.k, c.batch_size, c.hybrid, c.grounded, c.abstain_bias) == (3, 4, False, True, 1.5)
    y = tmp_path / "serve.yaml"
    y.write_text("do_sample: true\n")
    with pytest.raises(ConfigError, match=r"'do_sample' in .* is not a setting of ServeConfig \(each request sets its own decoding"):
        build_config(ServeConfig, y)


# ------------------------------------------------------------------------------ JSON answers (response_format)

COLOUR = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["colour", "n"], "additionalProperties": False}


def test_response_format_json_schema_is_decoded_under_the_schema(client: openai.OpenAI, reference: Pipeline) -> None:
    import jsonschema

    from rag_pipeline.answer import structured

    rf = {"type": "json_schema", "json_schema": {"name": "colour", "strict": True, "schema": COLOUR}}
    r = ask(client, QUESTIONS[2], response_format=rf, max_tokens=40)
    content = r.choices[0].message.content
    jsonschema.validate(json.loads(content), COLOUR)  # the tiny model's random tokens, constrained: valid
    expected = reference.answer_batch([QUESTIONS[2]], decoding=Decoding(40, task="extract", json_schema=structured.canonical(COLOUR)))[0]
    assert content == expected.answer and r.choices[0].finish_reason == "stop"
    assert r.model_extra["fields"] == expected.fields and r.model_extra["unsupported_fields"] == expected.unsupported_fields
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, QUESTIONS[2], response_format=rf, max_tokens=40, stream=True)
                       if c.choices)
    assert streamed == content
    note = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}  # a free string: the limit cuts it ...
    r = ask(client, QUESTIONS[0], response_format={"type": "json_schema", "json_schema": {"name": "note", "schema": note}}, max_tokens=24)
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), note)  # ... and the object is closed in time: valid all the same
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens <= 24, (text, r.usage)  # cut short, and it says so


@pytest.mark.parametrize("extra,param,words", [
    ({"response_format": {"type": "yaml"}}, "response_format", "'yaml' is unknown"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}}, "response_format", "'array'"),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop", "would cut the JSON"),
])
def test_bad_response_formats_are_422_naming_the_field(server, extra: dict, param: str, words: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = httpx.post(f"{server[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_a_summary_is_asked_per_request(client: openai.OpenAI, reference: Pipeline) -> None:
    from rag_pipeline.answer import summary

    r = ask(client, QUESTIONS[1], max_tokens=60, extra_body={"task": "summary"})
    content = r.choices[0].message.content
    expected = reference.answer_batch([QUESTIONS[1]], decoding=Decoding(60, task="summary"))[0]
    assert content == expected.answer and r.model_extra["sentences"] == expected.sentences
    assert r.model_extra["summary_error"] == expected.summary_error
    assert [(s["text"], s["cited"]) for s in r.model_extra["sentences"]] == summary.sentences_of(content)
    cut = ask(client, QUESTIONS[1], max_tokens=5, extra_body={"task": "summary"})  # the limit cuts its sentence: said so
    assert cut.model_extra["summary_error"] and cut.model_extra["summary_error"] == \
        reference.answer_batch([QUESTIONS[1]], decoding=Decoding(5, task="summary"))[0].summary_error
    assert ask(client, QUESTIONS[1], max_tokens=8).model_extra.get("sentences") is None  # a short answer has none
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "task": "summary", "response_format": {"type": "json_object"}}
    bad = httpx.post(f"{client.base_url}chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "task"
