"""The batch worker: one thread answers queued requests in shared generation batches.

Request handlers (on the event loop) put a :class:`Job` into a bounded :class:`BatchQueue` and
await its events; they never touch the models. The :class:`BatchWorker` thread takes the first
waiting job, keeps collecting for ``wait_s`` or until ``max_batch`` jobs, and answers each group
of jobs with equal settings with one ``Pipeline.answer_batch`` call (searches with one
``retriever.search_batch``). Results go back to the loop with ``call_soon_threadsafe``.

With ``threads`` > 1 (``serve --batching continuous``, the default) the worker hands each job to one
of ``threads`` answering threads as soon as one is free, with no wait for more: each answers its job
with its own ``answer_batch`` call, and the pipeline's
:class:`~rag_pipeline.batching.DecodeEngine` decodes the rows of all of them in one running batch
that answers join and leave between decode steps.

A job whose client disconnected or timed out is removed from the queue at once (its slot is
free for the next request) and never reaches generation. One already answered in continuous
batching leaves the engine's batch at its next decode step (``generator.cancel_scope``); one in a
batch at arrival is finished and its result dropped.

Streaming shares the worker and its batches: ``answer_batch`` is called with the group's
:class:`~rag_pipeline.answer.ask.Decoding` and an ``on_text`` callback that hands each question's
answer text on in pieces that join to exactly its final answer (free decoding as it is
decoded; a calibrated answer whole, once its margin has decided it). Each job's
:class:`StopText` cuts that text before the request's first ``stop`` sequence, holding back a
tail that may be the start of one, so the streamed text is always the non-streamed answer.
``on_usage`` gives each answer's prompt and completion tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rag_pipeline.answer.ask import Answer, AskConfig, Decoding, TokenUsage
from rag_pipeline.errors import InputError
from rag_pipeline.generator import DecodeCancelled, cancel_scope

log = logging.getLogger(__name__)


class Answerer(Protocol):
    """What the server needs of ``ask.Pipeline`` (its public surface)."""

    cfg: AskConfig
    retriever: Any  # has search_batch(queries, k, hybrid) -> list[list[Hit]]

    @property
    def calibration(self) -> dict[str, Any] | None: ...  # the calibrated abstention applied (None: free decoding)

    def calibration_for(self, task: str, grounded: bool | None = None,
                        schema: str | None = None) -> dict[str, Any] | None: ...  # a task's; a JSON answer's under its schema

    def answer_batch(self, questions: list[str], *, decoding: Decoding | None = None, on_text: Any = None,
                     on_usage: Any = None) -> list[Answer]: ...


@dataclass
class ApiError(Exception):
    """An error with its HTTP status, in OpenAI's error vocabulary."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


Event = tuple[Literal["delta", "done", "error"], Any]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Where ``text`` is cut for the stop sequences: the start of the occurrence that ends first (None: none occurs).

    The occurrence that ends first is the one a streaming reader meets first, so a text and
    every longer text it begins are cut at the same place.
    """
    best: tuple[int, int] | None = None  # (end, start)
    for s in stop:
        at = text.find(s)
        if at >= 0 and (best is None or (at + len(s), at) < best):
            best = (at + len(s), at)
    return None if best is None else best[1]


class StopText:
    """A job's answer text as its client sees it: cut before the first stop sequence, streamed without taking text back."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.seen = ""  # the answer's text so far
        self.sent = ""  # what the client has been sent

    def feed(self, piece: str) -> str:
        """Take the next piece of the answer; return the text that can be sent now."""
        self.seen += piece
        return self._advance(self._visible())

    def finish(self, answer: str) -> tuple[str, str, bool]:
        """(text still to send, the whole text the client gets, whether a stop sequence cut it) for the final answer."""
        cut = cut_at_stop(answer, self.stop)
        text = answer if cut is None else answer[:cut]
        if not text.startswith(self.sent):  # the pipeline streamed text its answer does not begin with: a bug
            log.error("streamed text %r is not a prefix of the answer %r", self.sent, text)
            return "", text, cut is not None
        return self._advance(text), text, cut is not None

    def _visible(self) -> str:
        cut = cut_at_stop(self.seen, self.stop)
        if cut is not None:
            return self.seen[:cut]
        hold = 0  # the longest tail that is the start of a stop sequence may still become one
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.seen)), hold, -1):
                if self.seen.endswith(s[:n]):
                    hold = n
                    break
        return self.seen[:len(self.seen) - hold]

    def _advance(self, visible: str) -> str:
        if len(visible) <= len(self.sent) or not visible.startswith(self.sent):
            return ""
        out, self.sent = visible[len(self.sent):], visible
        return out


@dataclass
class Result:
    """A finished answer job: the answer, the text the client gets (stop applied), and its usage."""

    answer: Answer
    text: str
    usage: TokenUsage


@dataclass(eq=False)
class Job:
    """One queued request. ``key`` groups jobs that can share one batch call."""

    kind: Literal["answer", "search"]
    text: str
    key: tuple
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    stream: bool = False
    cancelled: bool = False
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.out = StopText(self.stop)

    def emit(self, kind: Literal["delta", "done", "error"], value: Any) -> None:
        """Hand an event to the request's coroutine (thread-safe); dropped once cancelled."""
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down, nobody listens
            self.cancelled = True

    def add_text(self, piece: str) -> None:
        """The next piece of the answer (worker thread): streamed to the client as far as ``stop`` allows."""
        out = self.out.feed(piece)
        if out and self.stream:
            self.emit("delta", out)

    def finish(self, answer: Answer, usage: TokenUsage) -> None:
        """Send what is left of the answer, then the result (finish_reason "stop" when a stop sequence cut it)."""
        rest, text, cut = self.out.finish(answer.answer)
        if rest and self.stream:
            self.emit("delta", rest)
        if cut:
            usage = TokenUsage(usage.prompt_tokens, usage.completion_tokens, "stop")
        self.emit("done", Result(answer, text, usage))


class BatchQueue:
    """A bounded FIFO of jobs; cancelling a queued job frees its slot immediately."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full or closed."""
        with self._cond:
            if self._closed or len(self._items) >= self.maxsize:
                return False
            self._items.append(job)
            self._cond.notify()
            return True

    def cancel(self, job: Job) -> bool:
        """Mark ``job`` cancelled; True when it was still queued (and is now dropped)."""
        with self._cond:
            job.cancelled = True
            try:
                self._items.remove(job)
                return True
            except ValueError:
                return False

    def take(self, max_items: int, wait_s: float) -> list[Job] | None:
        """Block for a first job, then collect more for up to ``wait_s``; None once closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + wait_s
            while len(self._items) < max_items and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def close(self) -> list[Job]:
        """Refuse new jobs, wake the worker, and return the jobs still waiting."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0


class BatchWorker:
    """The thread that takes jobs from the queue: it answers them in batches itself, or hands each to an answering thread."""

    def __init__(self, pipe: Answerer, queue: BatchQueue, max_batch: int, wait_s: float, threads: int = 1) -> None:
        self.pipe, self.queue, self.max_batch, self.wait_s = pipe, queue, max_batch, wait_s
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rag-batch-worker", daemon=True)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rag-answer") if threads > 1 else None
        self._free = threading.Semaphore(threads)

    def start(self) -> BatchWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        for job in self.queue.close():
            job.emit("error", ApiError(503, "the server is shutting down: retry against a running server", "server_error"))
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # the jobs being answered finish
        engine = getattr(self.pipe, "engine", None)
        if engine is not None:
            engine.stop(timeout)

    def _run(self) -> None:
        if self._pool is not None:
            while self._free.acquire() and (jobs := self.queue.take(1, 0.0)) is not None:
                if jobs[0].cancelled:
                    self._free.release()
                    continue
                self._pool.submit(self._answer_one, jobs[0])
            return
        while (jobs := self.queue.take(self.max_batch, self.wait_s)) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                if not job.cancelled:
                    groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._process(key, group)

    def _answer_one(self, job: Job) -> None:
        try:
            self._process(job.key, [job])
        finally:
            self._free.release()

    def _process(self, key: tuple, group: list[Job]) -> None:
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.requests += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
        try:
            if key[0] == "search":
                self._search(key, group)
            else:
                self._answer(key[1], group)
        except DecodeCancelled:
            log.info("stopped answering a %s request whose client went away", key[0])
        except InputError as e:
            if len(group) > 1:  # one bad question must not fail the others: answer them one by one
                with self._stats_lock:
                    self.stats.batches -= 1
                    self.stats.requests -= len(group)
                for job in group:
                    self._process(key, [job])
                return
            group[0].emit("error", ApiError(422, str(e), param="messages"))
        except Exception:  # noqa: BLE001 - the worker must outlive any one batch; the client gets a 500
            log.exception("batch of %d %s request(s) failed", len(group), key[0])
            for job in group:
                job.emit("error", ApiError(500, "internal error while answering: see the server log", "server_error"))

    def _answer(self, decoding: Decoding, group: list[Job]) -> None:
        usage = [TokenUsage() for _ in group]

        def on_usage(i: int, u: TokenUsage) -> None:
            usage[i] = u

        # A request answered alone (continuous batching) whose client hangs up stops decoding: the engine drops its row
        # between two steps. Rows of a shared batch at arrival, and beam searches, run to their end.
        scope = cancel_scope(lambda: group[0].cancelled) if len(group) == 1 else contextlib.nullcontext()
        with scope:
            answers = self.pipe.answer_batch([j.text for j in group], decoding=decoding,
                                             on_text=lambda i, piece: group[i].add_text(piece), on_usage=on_usage)
        for job, answer, u in zip(group, answers, usage):
            job.finish(answer, u)

    def _search(self, key: tuple, group: list[Job]) -> None:
        _, k, hybrid = key
        hybrid = self.pipe.cfg.hybrid if hybrid is None else hybrid  # None: as the server retrieves for answers
        search = functools.partial(self.pipe.retriever.search_batch, [j.text for j in group], k, hybrid)
        engine = getattr(self.pipe, "engine", None)
        results = search() if engine is None else engine.call(search)  # torch work stays on the engine's thread
        for job, hits in zip(group, results):
            job.emit("done", hits)
