"""``serve``: an OpenAI-compatible HTTP server (and a web page) over the retriever + adapter.

Setup -> run -> stop. :func:`run` checks the index and adapter, binds (127.0.0.1 by default),
and loads the models once, through :meth:`rag_pipeline.answer.ask.Pipeline.load`, in a background
thread while ``/health`` answers 503. Then one worker thread answers requests in shared
batches (see :mod:`rag_pipeline.serve.batcher`); the routes are in :mod:`rag_pipeline.serve.app`:

* ``POST /v1/chat/completions``: the last user message is the question; ``stream: true`` streams
  server-sent events; the cited sources are in the extra top-level field ``citations``;
* ``GET /v1/models``, ``POST /v1/search`` (retrieval only), ``GET /health``, ``GET /`` (the page).

fastapi and uvicorn are imported inside :func:`run`, so ``serve --help`` stays fast.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline.config import opt
from rag_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "RAG_PIPELINE_API_KEY"


@dataclass
class ServeConfig:
    """Settings of ``serve`` (defaults < ``--config`` YAML < flags)."""

    index: str = opt("indexes/disfl_qa", "index directory written by build-index")
    adapter: str = opt("", "train-generator output directory; empty: as ask chooses (runs/disfl_qa/adapter, else adapters/smollm2-disfl-qa)")
    no_adapter: bool = opt(False, "serve the base generator without any adapter")
    base_model: str = opt("", "base generator; empty: the adapter's recorded base")
    host: str = opt("127.0.0.1", "address to bind; loopback by default (anything else should get an --api-key)")
    port: int = opt(8000, "TCP port to listen on")
    api_key: str = opt("", f"require 'Authorization: Bearer KEY' on /v1 routes; empty: ${API_KEY_ENV}, else no authentication")
    model_name: str = opt("", "model id the API serves and lists; empty: the adapter directory's name")
    k: int = opt(2, "chunks retrieved and shown to the generator (2, as the reference adapter was trained)")
    max_new_tokens: int = opt(48, "generation length when a request gives no max_tokens; answers are short spans")
    max_tokens_limit: int = opt(256, "the largest max_tokens a request may ask for (422 above)")
    min_score: float = opt(0.30, "abstain without generating when the best retrieval cosine is below this (as ask)")
    max_prompt_tokens: int = opt(1024, "token budget of the prompt; documents are cut to fit (as ask)")
    hybrid: bool = opt(True, "fuse BM25 with dense retrieval (as ask, and as the reference adapter was trained and calibrated); "
                             "--no-hybrid for dense only")
    grounded: bool = opt(False, "grounded decoding (as ask --grounded): answers copy a span of a shown document, with its "
                                "calibrated threshold")
    abstain_bias: float = opt(0.0, "added to the calibrated threshold (as ask): > 0 answers more often, < 0 abstains more often")
    answer_check: Literal["grounded", "abstain", "off"] = opt(
        "grounded", "as ask: an answer with no content word or unsupported by its cited passage is decoded again grounded "
                    "(grounded), abstained on (abstain), or shown (off)")
    device: str = opt("auto", "auto (CUDA if present), cpu or cuda")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "generator weights (as ask): auto = bf16 where it runs fast, else fp32")
    max_batch: int = opt(8, "requests answered together in one generation batch (8: ask's batch size)")
    batch_wait_ms: float = opt(20.0, "how long the worker waits for more requests after the first one (adds at most this to latency)")
    max_queue: int = opt(64, "requests that may wait for the worker; beyond this the server answers 503 with Retry-After")
    request_timeout_s: float = opt(120.0, "a request not answered within this many seconds gets 504 (and leaves the queue)")
    max_body_bytes: int = opt(256 * 1024, "largest request body accepted (413 above)")
    max_question_chars: int = opt(2000, "longest question accepted (422 above); the prompt budget cuts documents, not questions")
    snippet: int = opt(300, "characters of each cited passage returned in citations[].snippet")
    seed: int = opt(0, "sampling seed when a request sets temperature > 0 and no seed")

    def __post_init__(self) -> None:
        if not self.index:
            raise ConfigError("index is empty: pass --index DIR (an index built with rag-pipeline build-index)")
        if self.adapter and self.no_adapter:
            raise ConfigError(f"--adapter {self.adapter} and --no-adapter contradict each other: pass one of them")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port is {self.port}: use a TCP port from 1 to 65535")
        if not self.host.strip():
            raise ConfigError("host is empty: pass an address to bind, e.g. --host 127.0.0.1")
        for name, low in (("k", 1), ("max_new_tokens", 1), ("max_batch", 1), ("max_queue", 1), ("max_body_bytes", 1024),
                          ("max_question_chars", 1), ("snippet", 20), ("max_prompt_tokens", 64)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} is {getattr(self, name)}: it must be at least {low}")
        if self.max_tokens_limit < self.max_new_tokens:
            raise ConfigError(f"max_tokens_limit is {self.max_tokens_limit}, below max_new_tokens {self.max_new_tokens}: raise it")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ConfigError(f"batch_wait_ms ({self.batch_wait_ms}) must be >= 0 and request_timeout_s ({self.request_timeout_s}) > 0")
        if not -1 <= self.min_score <= 1:
            raise ConfigError(f"min_score is {self.min_score}: it is a cosine similarity, use a value in [-1, 1] (-1 never abstains)")


def ask_config(cfg: ServeConfig) -> Any:
    """The ``AskConfig`` the server's pipeline is loaded with."""
    from rag_pipeline.answer.ask import AskConfig

    return AskConfig(index=cfg.index, adapter=cfg.adapter, no_adapter=cfg.no_adapter, base_model=cfg.base_model, k=cfg.k,
                     max_new_tokens=cfg.max_new_tokens, min_score=cfg.min_score, max_prompt_tokens=cfg.max_prompt_tokens,
                     hybrid=cfg.hybrid, grounded=cfg.grounded, abstain_bias=cfg.abstain_bias, answer_check=cfg.answer_check,
                     device=cfg.device, dtype=cfg.dtype,
                     batch_size=cfg.max_batch, snippet=cfg.snippet, progress=False, seed=cfg.seed)


def limits_for(cfg: ServeConfig, model_id: str, api_key: str) -> Any:
    """The application's settings (:class:`~rag_pipeline.serve.app.Limits`) from the config."""
    from rag_pipeline.serve.app import Limits

    return Limits(model_id=model_id, api_key=api_key, max_new_tokens=cfg.max_new_tokens, max_tokens_limit=cfg.max_tokens_limit,
                  max_batch=cfg.max_batch, batch_wait_ms=cfg.batch_wait_ms, max_queue=cfg.max_queue,
                  request_timeout_s=cfg.request_timeout_s, max_body_bytes=cfg.max_body_bytes,
                  max_question_chars=cfg.max_question_chars, seed=cfg.seed)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(cfg: ServeConfig) -> dict[str, Any]:
    """Serve until interrupted; returns how the server ended (status, detail, batch counts).

    Raises:
        IndexError_: the index is missing or corrupt (checked before binding).
        InputError: the adapter directory does not exist, or is damaged (checked before binding).
    """
    import uvicorn

    from rag_pipeline.answer.ask import Pipeline, choose_adapter
    from rag_pipeline.generator import check_adapter_files, read_adapter_meta
    from rag_pipeline.index.build import read_manifest
    from rag_pipeline.model_paths import SMOLLM2_ID
    from rag_pipeline.serve.app import create_app

    ask_cfg = ask_config(cfg)
    read_manifest(cfg.index)
    adapter, why = choose_adapter(ask_cfg)
    if adapter is not None:  # a damaged adapter is one error line now, not a failure in the loading thread after binding
        check_adapter_files(adapter, read_adapter_meta(adapter))
    model_id = cfg.model_name or (Path(adapter).name if adapter else Path(cfg.base_model or SMOLLM2_ID).name)
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    if not is_loopback(cfg.host) and not api_key:
        log.warning("warning: binding %s without an API key: anyone who can reach this address can use the server "
                    "(pass --api-key or set %s)", cfg.host, API_KEY_ENV)

    def load() -> Pipeline:
        pipe = Pipeline.load(ask_cfg)
        log.info("%s", pipe.description)
        return pipe

    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(limits_for(cfg, model_id, api_key), load, on_load_failure=stop)
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
