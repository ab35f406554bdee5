"""``serve``: an OpenAI-compatible HTTP server (and a web page) over the retriever + adapter.

Setup -> run -> stop. :func:`run` checks the index and adapter, binds (127.0.0.1 by default),
and loads the models once, through :meth:`rag_pipeline.answer.ask.Pipeline.load`, in a background
thread while ``/health`` answers 503. Then requests are answered as they arrive, their answers decoded
in one running batch that they join and leave between steps (:mod:`rag_pipeline.batching`;
``--batching arrival``: one worker thread answers the requests that arrived together as one batch; see
:mod:`rag_pipeline.serve.batcher`); the routes are in :mod:`rag_pipeline.serve.app`:

* ``POST /v1/chat/completions``: the last user message is the question; ``stream: true`` streams
  server-sent events; the cited sources are in the extra top-level field ``citations``;
* ``GET /v1/models``, ``POST /v1/search`` (retrieval only), ``GET /health``, ``GET /`` (the page).

fastapi and uvicorn are imported inside :func:`run`, so ``serve --help`` stays fast.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline import batching
from rag_pipeline.adapter_meta import read_adapter_meta
from rag_pipeline.answer import probe as answerability
from rag_pipeline.answer.abstention import check_orders
from rag_pipeline.answer.ask import Pipeline, choose_adapter
from rag_pipeline.answer.settings import AnswerSettings, Task
from rag_pipeline.config import fixed, opt
from rag_pipeline.errors import ConfigError
from rag_pipeline.generator import check_adapter_files
from rag_pipeline.index.format import read_manifest
from rag_pipeline.model_paths import SMOLLM2_ID

log = logging.getLogger(__name__)

API_KEY_ENV = "RAG_PIPELINE_API_KEY"


@dataclass
class ServeConfig(AnswerSettings):
    """Settings of ``serve``: the answering settings (:class:`AnswerSettings`, as ``ask``) and the server's own."""

    max_new_tokens: int = opt(48, "generation length when a request gives no max_tokens; answers are short spans")
    num_beams: int = fixed(1, "each request sets its own decoding")
    do_sample: bool = fixed(False, "each request sets its own decoding: temperature > 0 samples")
    temperature: float = fixed(0.7, "each request sets its own decoding")
    top_p: float = fixed(0.9, "each request sets its own decoding")
    seed: int = opt(0, "sampling seed when a request sets temperature > 0 and no seed")
    task: Task = fixed("qa", "each request sets its own answer form: response_format for JSON, \"task\": \"summary\" for a summary")
    schema: str = fixed("", "each request sets its own answer form: response_format json_object or json_schema")
    batch_size: int = fixed(8, "--max-batch sets it: the requests answered together are one generation batch")
    snippet: int = opt(300, "characters of each cited passage returned in citations[].snippet (more than ask prints: the web page shows the passage)")
    host: str = opt("127.0.0.1", "address to bind; loopback by default (anything else should get an --api-key)")
    port: int = opt(8000, "TCP port to listen on")
    api_key: str = opt("", f"require 'Authorization: Bearer KEY' on /v1 routes; empty: ${API_KEY_ENV}, else no authentication")
    model_name: str = opt("", "model id the API serves and lists; empty: the adapter directory's name")
    max_tokens_limit: int = opt(256, "the largest max_tokens a request may ask for (422 above)")
    batching: Literal["continuous", "arrival"] = opt(
        "continuous", "continuous: each request is answered as it arrives, its answer joining the running decode batch "
        "between steps and leaving it when done (rag_pipeline.batching); arrival: requests that arrive together are "
        "answered as one batch, and later ones wait for it")
    max_batch: int = opt(8, "continuous: requests answered at once (rows decoding together); arrival: requests answered together in one batch")
    batch_wait_ms: float = opt(20.0, "arrival: how long the worker waits for more requests after the first one (adds at most this to latency)")
    max_queue: int = opt(64, "requests that may wait for the worker; beyond this the server answers 503 with Retry-After")
    request_timeout_s: float = opt(120.0, "a request not answered within this many seconds gets 504 (and leaves the queue)")
    max_body_bytes: int = opt(256 * 1024, "largest request body accepted (413 above)")
    max_question_chars: int = opt(2000, "longest question accepted (422 above); the prompt budget cuts documents, not questions")

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch is {self.max_batch}: it must be at least 1")
        self.batch_size = self.max_batch  # one worker batch is one generation batch
        super().__post_init__()
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port is {self.port}: use a TCP port from 1 to 65535")
        if not self.host.strip():
            raise ConfigError("host is empty: pass an address to bind, e.g. --host 127.0.0.1")
        for name, low in (("max_queue", 1), ("max_body_bytes", 1024), ("max_question_chars", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} is {getattr(self, name)}: it must be at least {low}")
        for name in ("max_new_tokens", "max_json_tokens", "max_summary_tokens"):
            if self.max_tokens_limit < getattr(self, name):
                raise ConfigError(f"max_tokens_limit is {self.max_tokens_limit}, below {name} {getattr(self, name)}: raise it")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ConfigError(f"batch_wait_ms ({self.batch_wait_ms}) must be >= 0 and request_timeout_s ({self.request_timeout_s}) > 0")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int) -> None:
    """Whether ``host:port`` can be listened on, before the models load; uvicorn itself binds after them and
    exits 1 with no fix named.

    Raises:
        ConfigError: the port is taken, or the host is not an address of this machine.
    """
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):  # each, as asyncio binds
            with socket.socket(family, kind, proto) as s:
                if os.name == "posix":  # as asyncio does: a port in TIME_WAIT is free (on Windows it would share a live one)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio does: "::" does not take the IPv4 port too
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(address)
    except OSError as e:
        why = "is in use (another server?)" if getattr(e, "errno", None) == errno.EADDRINUSE else f"cannot be listened on ({e.strerror or e})"
        raise ConfigError(f"{host}:{port} {why}: pass another --port (or --host), or stop what holds it") from None


def run(cfg: ServeConfig) -> dict[str, Any]:
    """Serve until interrupted; returns how the server ended (status, detail, batch counts).

    Raises:
        IndexError_: the index is missing or corrupt (checked before binding).
        InputError: the adapter directory does not exist, or is damaged (checked before binding).
        ConfigError: the port cannot be listened on (:func:`check_listen`, before the models load).
    """
    import uvicorn

    from rag_pipeline.serve.app import create_app  # lazy: imports fastapi (serving only), and serve.app imports ServeConfig from here

    read_manifest(cfg.index)
    adapter, why = choose_adapter(cfg)
    meta = read_adapter_meta(adapter) if adapter is not None else None
    if adapter is not None:  # a damaged adapter is one error line now, not a failure in the loading thread after binding
        check_adapter_files(adapter, meta)
        if cfg.abstain_probe:
            answerability.read(adapter)
    check_orders(cfg, meta.abstention if meta else None, why)
    check_listen(cfg.host, cfg.port)
    model_id = cfg.model_name or (Path(adapter).name if adapter else Path(cfg.base_model or SMOLLM2_ID).name)
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    if not is_loopback(cfg.host) and not api_key:
        log.warning("warning: binding %s without an API key: anyone who can reach this address can use the server "
                    "(pass --api-key or set %s)", cfg.host, API_KEY_ENV)

    def load() -> Pipeline:
        pipe = Pipeline.load(cfg)
        continuous = cfg.batching == "continuous" and batching.supported(pipe.model, pipe.kind)
        if continuous:
            pipe.engine = batching.DecodeEngine(pipe.model, cfg.max_batch, cfg.draft_tokens).start()
        log.info("%s; %s", pipe.description, "continuous batching" if continuous else "batches at arrival")
        return pipe

    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(cfg, model_id, api_key, load, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=5, lifespan="on"))
    log.info("serving model '%s' (%s) on http://%s:%d (authentication %s)", model_id, why, cfg.host, cfg.port,
             "on" if api_key else "off")
    server.run()
    state = app.state.server
    stats = state.worker.stats if state.worker else None
    return {"status": "failed" if state.status == "failed" else "stopped", "detail": state.detail, "model": model_id,
            "batches": stats.batches if stats else 0, "requests": stats.requests if stats else 0}


def main(cfg: ServeConfig) -> int:
    """``rag-pipeline serve``: 2 when the models failed to load, else 0 once stopped.

    Stopped by a signal, uvicorn shuts down gracefully and then re-raises the signal: SIGTERM
    ends the process with that signal's status, Ctrl-C with the CLI's 130.
    """
    result = run(cfg)
    if result["status"] == "failed":
        print(f"error: {result['detail']}", file=sys.stderr)
        return 2
    return 0
