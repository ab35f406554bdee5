"""The FastAPI application: routes, limits, authentication, errors and the access log.

:func:`create_app` takes the serve settings, the model id and API key resolved from them, and a
``load`` function; the models are loaded in a background thread after the server starts
listening (``/health`` answers 503 until then), and then the
:class:`~rag_pipeline.serve.batcher.BatchWorker` starts. The routes are module-level functions
on :data:`router`; they reach the shared :class:`ServerState` through the ``Server`` dependency.
Handlers only validate, queue and wait: all model work happens on the worker thread.

Every error leaves as JSON in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``), never as a stack trace; unexpected exceptions are logged with their traceback on
the server and answered with a 500 that names the request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag_pipeline.answer import structured
from rag_pipeline.answer.ask import Answer, Decoding, TokenUsage, parse_citations
from rag_pipeline.errors import InputError, RagError
from rag_pipeline.serve import ServeConfig
from rag_pipeline.serve import schema as S
from rag_pipeline.serve.batcher import Answerer, ApiError, BatchQueue, BatchWorker, Job, Result

log = logging.getLogger(__name__)
access_log = logging.getLogger("rag_pipeline.serve.access")

POLL_S = 0.2  # how often a waiting request checks whether its client is still connected
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


RETRY_AFTER_S = 1  # a full queue's Retry-After


class ServerState:
    """What the routes share: the settings, the load status, the queue and the worker."""

    def __init__(self, cfg: ServeConfig, model_id: str, api_key: str, loader: Callable[[], Answerer],
                 on_load_failure: Callable[[], None] | None = None) -> None:
        self.cfg, self.model_id, self.api_key = cfg, model_id, api_key
        self.loader, self.on_load_failure = loader, on_load_failure
        self.status: str = "loading"
        self.detail = "loading the index and the models"
        self.queue = BatchQueue(cfg.max_queue)
        self.worker: BatchWorker | None = None
        self.created = int(time.time())

    def load(self) -> None:
        """Run in a thread: load the models, then start the worker (or record why it failed)."""
        try:
            pipe = self.loader()
        except RagError as e:
            self.status, self.detail = "failed", str(e)
            log.error("error: %s", e)
        except Exception as e:  # noqa: BLE001 - reported on /health and in the log; the server then stops
            self.status, self.detail = "failed", f"{type(e).__name__} while loading the models (see the server log)"
            log.exception("loading the models failed")
        else:
            threads = self.cfg.max_batch if getattr(pipe, "engine", None) is not None else 1  # continuous: a thread per request
            self.worker = BatchWorker(pipe, self.queue, self.cfg.max_batch, self.cfg.batch_wait_ms / 1000, threads).start()
            self.status, self.detail = "ok", ""
            log.info("models loaded; answering on the batch worker")
            return
        if self.on_load_failure is not None:
            self.on_load_failure()


def server_state(request: Request) -> ServerState:
    """The application's :class:`ServerState` (the ``Server`` dependency)."""
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]


# ------------------------------------------------------------------------------ middleware


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared (Content-Length) or streamed (chunked).

    The body is read here, up to the limit, and replayed to the application; later ``receive``
    calls go to the server (the disconnect checks need them).
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(scope, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, send: Callable) -> None:
        err = ApiError(413, f"request body is over the limit of {self.limit} bytes: send a shorter request "
                            "(the server's --max-body-bytes sets the limit)", code="request_too_large")
        await _error_response(err).__call__(scope, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


class AccessLog:
    """One JSON line per request (method, path, status, latency, request id) on ``rag_pipeline.serve.access``.

    The request id is the client's ``X-Request-Id`` when it sends a short one, else a process
    prefix and a counter; it is echoed in the ``X-Request-Id`` response header.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 64 and given.replace("-", "").replace("_", "").isalnum() else f"{self.prefix}-{next(self.counter)}"
        scope.setdefault("state", {})["request_id"] = rid
        t0, status = time.perf_counter(), {"code": 0}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status["code"] = status["code"] or 500  # the error handler answers it outside this middleware
            raise
        finally:
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": status["code"] or 499,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 1), "request_id": rid,
            }))


# ------------------------------------------------------------------------------ errors


def _error_response(err: ApiError) -> JSONResponse:
    body = S.ErrorResponse(error=S.ErrorDetail(message=err.message, type=err.type, param=err.param, code=err.code))
    return JSONResponse(body.model_dump(), status_code=err.status, headers=err.headers)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return _error_response(err)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return _error_response(_invalid_body(request.headers.get("content-type", ""), err.errors()))


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if err.status_code == 404 else None
    routes = "GET /, GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/search"
    message = {404: f"no route {request.url.path}: the routes are {routes}",
               405: f"method {request.method} is not allowed on {request.url.path}: the routes are {routes}"}.get(
        err.status_code, str(err.detail))
    return _error_response(ApiError(err.status_code, message, code=kind, headers=dict(err.headers or {})))


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.error("unhandled error in request %s", _request_id(request), exc_info=err)
    return _error_response(ApiError(500, f"internal server error (request id {_request_id(request)}): see the server log",
                                    "server_error"))


ERROR_HANDLERS: dict[Any, Callable[..., Any]] = {
    ApiError: _api_error, RequestValidationError: _validation_error, StarletteHTTPException: _http_error, Exception: _unexpected,
}


def _is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON (absent, application/json, application/*+json)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _invalid_body(content_type: str, errors: Sequence[Any]) -> ApiError:
    """The error for a body that failed validation: bad JSON and a wrong Content-Type said plainly, else each field's problem."""
    errors = list(errors)
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        at = first.get("loc", ("body", "?"))[-1]
        why = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"request body is not valid JSON at character {at}{f' ({why})' if why else ''}: "
                             "send one JSON object, e.g. {\"model\": ..., \"messages\": [...]}", code="invalid_json")
    if not _is_json(content_type) and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return ApiError(415, f"Content-Type must be application/json (the request said {content_type!r}): send the body "
                             "as JSON with the header 'Content-Type: application/json'", code="unsupported_media_type")
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', 'invalid')}" for e in errors]
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return ApiError(422, "invalid request: " + "; ".join(problems[:5]), param=param)


# ------------------------------------------------------------------------------ helpers


def _citations(ans: Answer, text: str | None = None) -> list[S.CitationOut]:
    """The answer's citations; with ``text`` (the answer cut by ``stop``), only those it still cites."""
    kept = None if text is None or text == ans.answer else set(parse_citations(text, max((c.n for c in ans.citations), default=0)))
    return [S.CitationOut(number=c.n, doc_id=c.doc_id, title=c.title, source=c.source, score=c.score, snippet=c.snippet)
            for c in ans.citations if kept is None or c.n in kept]


MIN_TEMPERATURE = 0.01  # lower, sampling is greedy decoding in all but float overflow


def _decoding(body: S.ChatCompletionRequest, max_new: int, seed: int, calibrated: bool) -> tuple[Decoding, list[str]]:
    """The request's generation settings, and warnings about what was asked and is not applied."""
    if body.temperature and calibrated:  # the calibrated abstention scores greedy answers
        return Decoding(max_new), ["temperature is ignored: this server's calibrated abstention answers greedily"]
    if body.temperature and body.temperature < MIN_TEMPERATURE:  # logits / 1e-40 overflow to inf: NaN probabilities
        return Decoding(max_new), [f"temperature {body.temperature:g} is below {MIN_TEMPERATURE:g}: answered greedily, as 0 is"]
    if body.temperature:
        return Decoding(max_new, True, body.temperature, body.top_p or 1.0, seed if body.seed is None else body.seed), []
    return Decoding(max_new), []  # greedy: top_p and seed change nothing, so they must not split batches


def _warning_header(warnings: list[str]) -> dict[str, str]:
    """A ``Warning`` header (code 299, "miscellaneous persistent warning") for what the request asked and did not get."""
    if not warnings:
        return {}
    text = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "?" for ch in "; ".join(warnings))  # a header is ASCII
    return {"Warning": f'299 rag-pipeline "{text[:1000]}"'}


def _question(req: S.ChatCompletionRequest, max_chars: int) -> str:
    """The last user message's text, checked for emptiness and length."""
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise ApiError(422, "no user message: the last message with role 'user' is the question", param="messages")
    question = users[-1].text().strip()
    if not question:
        raise ApiError(422, "the last user message is empty: it must hold the question", param="messages")
    if len(question) > max_chars:
        raise ApiError(422, f"the question is {len(question)} characters long, over the limit of {max_chars}: "
                            "ask a shorter question (the server's --max-question-chars sets the limit)",
                       param="messages", code="question_too_long")
    return question


class _ClientGone(Exception):
    pass


# ------------------------------------------------------------------------------ dependencies and the queue


async def authorize(request: Request, state: Server) -> None:  # async: a sync dependency would take a threadpool hop
    """401 unless the request carries the server's API key (when it has one)."""
    if not state.api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                            "(the key the server was started with, --api-key or RAG_PIPELINE_API_KEY)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def ready(state: ServerState) -> None:
    """503 while the models load or after they failed to (called once the request body is valid)."""
    if state.status == "loading":
        raise ApiError(503, "the models are still loading: retry shortly (GET /health says when they are ready)",
                       "server_error", code="loading", headers={"Retry-After": "5"})
    if state.status == "failed":
        raise ApiError(503, f"the models failed to load: {state.detail}", "server_error", code="load_failed")


def submit(state: ServerState, kind: str, text: str, key: tuple, stream: bool = False, stop: tuple[str, ...] = ()) -> Job:
    """Queue a job for the worker; 503 when the queue is full."""
    loop = asyncio.get_running_loop()
    job = Job(kind, text, key, loop, asyncio.Queue(), stream, stop=stop)  # type: ignore[arg-type]
    if not state.queue.put(job):
        raise ApiError(503, f"the server is busy: {state.cfg.max_queue} requests are already waiting; retry after "
                            f"{RETRY_AFTER_S} s", "server_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
    return job


async def next_event(state: ServerState, job: Job, request: Request, deadline: float, watch_disconnect: bool = True) -> tuple[str, Any]:
    """The job's next event; 504 past the deadline; _ClientGone when the client hung up."""
    loop = asyncio.get_running_loop()
    getter = asyncio.ensure_future(job.events.get())
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(504, f"no answer within the request timeout of {state.cfg.request_timeout_s:g} s: "
                                    "retry later, or ask the operator to raise --request-timeout-s",
                               "server_error", code="timeout")
            done, _ = await asyncio.wait({getter}, timeout=min(POLL_S, left))
            if done:
                return getter.result()
            if watch_disconnect and await request.is_disconnected():
                raise _ClientGone
    finally:
        if not getter.done():
            getter.cancel()


async def wait_done(state: ServerState, job: Job, request: Request) -> Any:
    """The job's result; raises its error, 504 past the request timeout, _ClientGone when the client hung up."""
    deadline = asyncio.get_running_loop().time() + state.cfg.request_timeout_s
    try:
        while True:
            kind, value = await next_event(state, job, request, deadline)
            if kind == "done":
                return value
            if kind == "error":
                raise value
    finally:
        state.queue.cancel(job)  # a no-op once answered; drops it from the queue on timeout or hang-up


# ------------------------------------------------------------------------------ routes

router = APIRouter()


@router.get("/health", response_model=S.Health)
async def health(state: Server) -> JSONResponse:
    stats = state.worker.stats if state.worker else None
    body = S.Health(
        status=state.status, model=state.model_id, detail=state.detail,  # type: ignore[arg-type]
        queue={"pending": len(state.queue), "max": state.cfg.max_queue},
        batches=_batch_stats(state),
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.status == "ok" else 503)


def _batch_stats(state: ServerState) -> dict[str, Any]:
    """/health's batch counts: answer_batch calls and requests; with continuous batching, decode steps and the most rows in one."""
    if state.worker is None:
        return {}
    st, engine = state.worker.stats, getattr(state.worker.pipe, "engine", None)
    if engine is None:
        return {"count": st.batches, "requests": st.requests, "largest": st.largest}
    return {"count": st.batches, "requests": st.requests, "largest": engine.stats.largest, "decode_steps": engine.stats.steps}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    html = resources.files("rag_pipeline").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer"})


@router.get("/v1/models", response_model=S.ModelList, dependencies=[Depends(authorize)])
async def models(state: Server) -> S.ModelList:
    return S.ModelList(data=[S.ModelCard(id=state.model_id, created=state.created)])


@router.post("/v1/search", response_model=S.SearchResponse, dependencies=[Depends(authorize)])
async def search(body: S.SearchRequest, request: Request, state: Server) -> Response:
    ready(state)
    query = body.query.strip()
    if not query or len(query) > state.cfg.max_question_chars:
        raise ApiError(422, f"the query must be 1 to {state.cfg.max_question_chars} characters of text", param="query")
    try:
        hits = await wait_done(state, submit(state, "search", query, ("search", body.k, body.hybrid)), request)
    except _ClientGone:
        return Response(status_code=499)
    return JSONResponse(S.SearchResponse(query=query, hits=[
        S.SearchHit(rank=h.rank, score=h.score, chunk_id=h.chunk.id, doc_id=h.chunk.doc_id, title=h.chunk.title,
                    source=h.chunk.source, position=h.chunk.position, text=h.chunk.text) for h in hits
    ]).model_dump())


@router.post("/v1/chat/completions", response_model=S.ChatCompletion, dependencies=[Depends(authorize)])
async def chat(body: S.ChatCompletionRequest, request: Request, state: Server) -> Response:
    ready(state)
    question, decoding, warnings = _chat_settings(body, state, _request_id(request))
    job = submit(state, "answer", question, ("answer", decoding), stream=body.stream, stop=body.stops())
    head = {"id": f"chatcmpl-{_request_id(request)}", "created": int(time.time()), "model": state.model_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, job, request, head, include_usage, _warning_header(warnings))
    try:
        result: Result = await wait_done(state, job, request)
    except _ClientGone:
        return Response(status_code=499)
    answer = result.answer
    out = S.ChatCompletion(
        **head, citations=_citations(answer, result.text), abstained=answer.abstained, abstain_reason=answer.abstain_reason,
        fields=answer.fields, unsupported_fields=answer.unsupported_fields, sentences=answer.sentences, summary_error=answer.summary_error,
        choices=[S.Choice(message=S.ResponseMessage(content=result.text), finish_reason=result.usage.finish_reason)],
        usage=_usage(result.usage),
    )
    return JSONResponse(out.model_dump(), headers=_warning_header(warnings))


def _chat_settings(body: S.ChatCompletionRequest, state: ServerState, request_id: str) -> tuple[str, Decoding, list[str]]:
    """A chat request's question and generation settings, and warnings about what it asked and does not get."""
    if body.model != state.model_id:
        raise ApiError(404, f"model '{body.model}' is not served here: use '{state.model_id}' (GET /v1/models)",
                       param="model", code="model_not_found")
    unsupported = body.unsupported()
    if unsupported:
        name, why = unsupported
        raise ApiError(422, f"'{name}' is not supported: {why}; drop the field (or set it to its default)",
                       param=name, code="unsupported_field")
    question = _question(body, state.cfg.max_question_chars)
    try:
        schema = structured.schema_of_response_format(body.response_format)
    except InputError as e:
        raise ApiError(422, str(e), param="response_format") from None
    if schema is not None and body.stops():
        raise ApiError(422, "'stop' would cut the JSON object that response_format asks for: drop stop", param="stop")
    if schema is not None and body.task == "summary":
        raise ApiError(422, "'task': 'summary' and a JSON response_format were both given: ask for one of them", param="task")
    task = "extract" if schema is not None else body.task or "qa"
    default = {"qa": state.cfg.max_new_tokens, "summary": state.cfg.max_summary_tokens, "extract": state.cfg.max_json_tokens}[task]
    max_new = body.max_completion_tokens or body.max_tokens or default
    if max_new > state.cfg.max_tokens_limit:
        raise ApiError(422, f"max_tokens is {max_new}, over this server's limit of {state.cfg.max_tokens_limit}", param="max_tokens")
    canonical = None if schema is None else structured.canonical(schema)
    calibrated = state.worker is not None and state.worker.pipe.calibration_for(task, schema=canonical) is not None
    decoding, warnings = _decoding(body, max_new, state.cfg.seed, calibrated)
    if task != "qa":
        decoding = dataclasses.replace(decoding, task=task, json_schema=canonical)
    names = body.unknown()
    if names:
        warnings.append(f"ignored unknown field{'s' if len(names) > 1 else ''}: {', '.join(n[:40] for n in names[:10])}")
        log.info("request %s: %s", request_id, warnings[-1])
    return question, decoding, warnings


# ------------------------------------------------------------------------------ streaming


async def _stream(state: ServerState, job: Job, request: Request, head: dict[str, Any], include_usage: bool,
                  headers: dict[str, str]) -> Response:
    """Wait for the first event (so a timeout is still a 504), then stream server-sent events."""
    deadline = asyncio.get_running_loop().time() + state.cfg.request_timeout_s
    try:
        first = await next_event(state, job, request, deadline)
    except _ClientGone:
        state.queue.cancel(job)
        return Response(status_code=499)
    except ApiError:
        state.queue.cancel(job)
        raise
    if first[0] == "error":
        raise first[1]
    events = _events(state, job, request, deadline, first, head, include_usage)
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})


def _sse(body: dict[str, Any]) -> str:
    """One server-sent event holding ``body`` as JSON."""
    return f"data: {json.dumps(body)}\n\n"


async def _events(state: ServerState, job: Job, request: Request, deadline: float, first: tuple[str, Any],
                  head: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """The stream: the role, each text delta, the end (finish reason and citations), the usage if asked, [DONE].

    A timeout after the headers went out, or the worker's error, ends it with an error event.
    """
    def delta(d: S.Delta, finish_reason: str | None = None, **extra: Any) -> str:
        chunk = S.ChatCompletionChunk(**head, choices=[S.ChunkChoice(delta=d, finish_reason=finish_reason)], **extra)
        return _sse(chunk.model_dump(exclude_none=True))

    try:
        yield delta(S.Delta(role="assistant", content=""))
        kind, value = first
        while kind == "delta":
            yield delta(S.Delta(content=value))
            try:
                kind, value = await next_event(state, job, request, deadline, watch_disconnect=False)
            except ApiError as e:
                kind, value = "error", e
        if kind == "done":
            result: Result = value
            yield delta(S.Delta(), result.usage.finish_reason, citations=_citations(result.answer, result.text),
                        abstained=result.answer.abstained, abstain_reason=result.answer.abstain_reason,
                        fields=result.answer.fields, unsupported_fields=result.answer.unsupported_fields,
                        sentences=result.answer.sentences, summary_error=result.answer.summary_error)
            if include_usage:
                yield _sse(S.ChatCompletionChunk(**head, choices=[], usage=_usage(result.usage)).model_dump(exclude_none=True))
        else:
            err: ApiError = value
            yield _sse({"error": {"message": err.message, "type": err.type, "code": err.code}})
        yield "data: [DONE]\n\n"
    finally:
        state.queue.cancel(job)  # a client that hung up: no further events are produced for it


def _usage(u: TokenUsage) -> S.Usage:
    return S.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.prompt_tokens + u.completion_tokens)


# ------------------------------------------------------------------------------ the app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the models in a thread once the server listens; stop the worker at shutdown."""
    state: ServerState = app.state.server
    threading.Thread(target=state.load, name="rag-model-loader", daemon=True).start()
    yield
    if state.worker is not None:
        await asyncio.to_thread(state.worker.stop)
        st = state.worker.stats
        log.info("stopped after answering %d request(s) in %d batch(es)", st.requests, st.batches)


def create_app(cfg: ServeConfig, model_id: str, api_key: str, load: Callable[[], Answerer],
               on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """The server application for ``cfg``, serving ``model_id`` (``api_key``: required on /v1 when not empty).

    ``load`` runs once in a background thread at startup; ``on_load_failure`` is called when it fails.
    """
    app = FastAPI(title="rag-pipeline", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers=ERROR_HANDLERS)
    app.state.server = ServerState(cfg, model_id, api_key, load, on_load_failure)
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(AccessLog)  # added last: outermost, so it times and logs 413s too
    return app
