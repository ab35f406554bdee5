"""Helpers for the server tests: free ports, the real server in a subprocess or a thread, wrapped pipelines.

* :func:`start_cli_server` runs ``python -m rag_pipeline.cli serve ...`` in a subprocess on a
  free loopback port and :func:`stop_process` stops it by its PID.
* :class:`ThreadServer` runs an application from ``create_app`` under ``uvicorn.Server`` in a
  thread, for tests that need to hold the worker (:class:`GatedPipeline`) or replace the answers
  (:class:`CitingPipeline`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from rag_pipeline.answer import summary
from rag_pipeline.answer.ask import ABSTAIN, Answer, Citation

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> dict:
    """Poll ``/health`` until it answers 200; fail with the server's output when it dies first."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy:\n{out[-4000:]}")
        try:
            r = httpx.get(f"{base_url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.2)
    raise TimeoutError(f"{base_url}/health not 200 within {timeout} s (last: {last})")


def start_cli_server(args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``rag-pipeline serve ARGS --port P`` in a subprocess (this checkout's package); returns (process, base URL)."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "rag_pipeline.cli", "serve", *args, "--port", str(port)], cwd=REPO,
                            env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM the server by its PID (uvicorn shuts down gracefully), SIGKILL if it hangs."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


class ThreadServer:
    """An application served by ``uvicorn.Server`` in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="on", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Delegating:
    """The public surface of a Pipeline the server uses, delegated to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def cfg(self) -> Any:
        return self.inner.cfg

    @property
    def retriever(self) -> Any:
        return self.inner.retriever

    @property
    def calibration(self) -> Any:
        return self.inner.calibration

    def calibration_for(self, task: str, grounded: bool | None = None, schema: str | None = None) -> Any:
        return self.inner.calibration_for(task, grounded, schema)

    def answer_batch(self, questions: list[str], **kw: Any) -> list[Answer]:
        return self.inner.answer_batch(questions, **kw)


class GatedPipeline(Delegating):
    """Records every batch; while ``gate`` is clear, a batch waits in the worker (holding it busy)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch is waiting at the gate
        self.batches: list[list[str]] = []

    def answer_batch(self, questions: list[str], **kw: Any) -> list[Answer]:
        self.batches.append(list(questions))
        self.entered.set()
        if not self.gate.wait(60):
            raise TimeoutError("test gate never opened")
        return self.inner.answer_batch(questions, **kw)


class FailingPipeline(Delegating):
    """Raises an unexpected exception with a message that must never reach a client."""

    SECRET = "secret-internal-detail /home/user/model.py line 42"

    def answer_batch(self, questions: list[str], **kw: Any) -> list[Answer]:
        raise RuntimeError(self.SECRET)


class CitingPipeline(Delegating):
    """Answers with the best retrieved passage's title, cited as [1]; abstains below ``min_score``.

    The tiny test generator writes nonsense without citations; the web page test needs a cited
    answer, so this answers from the real retrieval of the tiny index instead.
    """

    def __init__(self, inner: Any, min_score: float = 0.2) -> None:
        super().__init__(inner)
        self.min_score = min_score

    def answer_batch(self, questions: list[str], **kw: Any) -> list[Answer]:
        """Answers as a whole (no ``on_text`` pieces, no ``on_usage``): the server streams each at the end."""
        out = []
        for q, hits in zip(questions, self.retriever.search_batch(questions, 2, False)):
            docs = [{**h.to_dict(), "truncated": False} for h in hits]
            t = {"retrieval": 0.0, "prompt": 0.0, "generation": 0.0}
            if not hits or hits[0].score < self.min_score:
                out.append(Answer(q, ABSTAIN, True, "threshold", [], docs, t, ""))
                continue
            c = hits[0].chunk
            cite = Citation(1, c.id, c.doc_id, c.title, c.source, hits[0].score, " ".join(c.text.split()))
            decoding = kw.get("decoding")
            if decoding is not None and decoding.task == "summary":  # one sentence its passage holds, one it does not
                text = f"{c.text.split('.')[0]} [1]. The passage was written by owls [1]."
                sentences = summary.citation_quality(summary.sentences_of(text), [d["text"] for d in docs])
                out.append(Answer(q, text, False, None, [cite], docs, t, text, sentences=sentences))
                continue
            out.append(Answer(q, f"{c.title} [1]", False, None, [cite], docs, t, f"{c.title} [1]"))
        return out
