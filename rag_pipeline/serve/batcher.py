"""The batch worker: one thread answers queued requests in shared generation batches.

Request handlers (on the event loop) put a :class:`Job` into a bounded :class:`BatchQueue` and
await its events; they never touch the models. The :class:`BatchWorker` thread takes the first
waiting job, keeps collecting for ``wait_s`` or until ``max_batch`` jobs, and answers each group
of jobs with equal settings with one ``Pipeline.answer_batch`` call (searches with one
``retriever.search_batch``). Results go back to the loop with ``call_soon_threadsafe``.

A job whose client disconnected or timed out is removed from the queue at once (its slot is
free for the next request) and never reaches generation; one already in a running batch is
finished and its result dropped.

Streaming shares the worker and its batches. For the length of one ``answer_batch`` call,
:class:`TokenTap` wraps the model's ``generate`` (an attribute of the public ``Pipeline.model``)
and passes it a streamer that receives every decoding step of the whole batch (token ids of
shape ``(batch,)``). The tap matches the batch's rows to jobs by their question, which the
prompt holds verbatim, and forwards each row's new text to its job as it is decoded. The same
tap counts prompt and completion tokens for ``usage`` and ``finish_reason``. A row it cannot
match (no row: a question that abstained on retrieval alone) gets its whole answer at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rag_pipeline.ask import Answer, AskConfig
from rag_pipeline.errors import InputError

log = logging.getLogger(__name__)


class Answerer(Protocol):
    """What the server needs of ``ask.Pipeline`` (its public surface)."""

    cfg: AskConfig
    retriever: Any  # has search_batch(queries, k, hybrid) -> list[list[Hit]]
    model: Any  # a transformers model: generate(input_ids=..., attention_mask=..., ...)
    tokenizer: Any

    def answer_batch(self, questions: list[str]) -> list[Answer]: ...


@dataclass(frozen=True)
class GenSettings:
    """Per-request generation settings; jobs with equal settings share a batch."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"


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

    def emit(self, kind: Literal["delta", "done", "error"], value: Any) -> None:
        """Hand an event to the request's coroutine (thread-safe); dropped once cancelled."""
        if self.cancelled:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down, nobody listens
            self.cancelled = True


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


@contextmanager
def use_settings(pipe: Answerer, settings: GenSettings, batch_size: int) -> Iterator[None]:
    """Answer with ``settings`` for the duration of the block (``Pipeline.cfg`` is read per call)."""
    base = pipe.cfg
    sample = settings.temperature > 0
    pipe.cfg = dataclasses.replace(
        base, max_new_tokens=settings.max_new_tokens, do_sample=sample, temperature=settings.temperature if sample else base.temperature,
        top_p=settings.top_p, seed=settings.seed, batch_size=batch_size,
    )
    try:
        yield
    finally:
        pipe.cfg = base


def _squash(text: str) -> str:
    return "".join(text.split())


class _RowState:
    def __init__(self, job: Job, prompt_tokens: int) -> None:
        self.job = job
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.ended = False  # EOS seen
        self.sent = ""  # text streamed so far (leading whitespace dropped, like the final strip)


class TokenTap:
    """Wraps ``model.generate`` during one batch call: matches rows to jobs, streams text, counts tokens."""

    def __init__(self, model: Any, tokenizer: Any, jobs: list[Job], max_new_tokens: int) -> None:
        self.model, self.tokenizer, self.jobs, self.max_new_tokens = model, tokenizer, jobs, max_new_tokens
        self.rows: dict[int, _RowState] = {}  # id(job) -> state
        self._saved: Any = None

    def __enter__(self) -> TokenTap:
        self._saved = self.model.__dict__.get("generate")
        self._orig = self.model.generate
        self.model.generate = self._generate  # an instance attribute shadows the class's method
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            del self.model.generate
        else:
            self.model.generate = self._saved

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is None or "streamer" in kwargs:
            return self._orig(*args, **kwargs)
        states = self._match(ids, mask)
        kwargs["streamer"] = _BatchStreamer(self, states)
        return self._orig(*args, **kwargs)

    def _match(self, ids: Any, mask: Any) -> list[_RowState | None]:
        """Each row's job: the longest unassigned question found in the row's prompt (duplicates in order)."""
        free = [j for j in self.jobs if id(j) not in self.rows]
        out: list[_RowState | None] = []
        for r in range(ids.shape[0]):
            row = ids[r] if mask is None else ids[r][mask[r].bool()]
            prompt = _squash(self.tokenizer.decode(row.tolist(), skip_special_tokens=False))
            found = [j for j in free if _squash(j.text) in prompt]
            if not found:
                out.append(None)
                continue
            job = max(found, key=lambda j: len(_squash(j.text)))  # max() keeps the first of equals
            free.remove(job)
            state = _RowState(job, int(row.numel()))
            self.rows[id(job)] = state
            out.append(state)
        return out

    def push(self, state: _RowState, token: int) -> None:
        if state.ended:
            return
        if token == self.tokenizer.eos_token_id:
            state.ended = True
            return
        state.ids.append(token)
        if not state.job.stream:
            return
        text = self.tokenizer.decode(state.ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return
        if text.startswith(state.sent) and len(text) > len(state.sent):
            state.job.emit("delta", text[len(state.sent):])
            state.sent = text

    def finish(self, job: Job, answer: Answer) -> Usage:
        """Stream what the client has not seen yet of the final answer; return the job's usage."""
        state = self.rows.get(id(job))
        sent = state.sent if state else ""
        if job.stream:
            if answer.answer.startswith(sent):
                rest = answer.answer[len(sent):]
                if rest:
                    job.emit("delta", rest)
            else:  # the generator's abstention paraphrase was normalized: the final chunk says abstained
                log.debug("streamed text %r is not a prefix of the final answer %r", sent, answer.answer)
        if state is None:
            return Usage()
        n = len(state.ids) + (1 if state.ended else 0)
        reason: Literal["stop", "length"] = "length" if not state.ended and n >= self.max_new_tokens else "stop"
        return Usage(state.prompt_tokens, n, reason)


class _BatchStreamer:
    """A transformers streamer for a whole batch: ``put`` gets the prompt once, then ``(batch,)`` ids a step."""

    def __init__(self, tap: TokenTap, states: list[_RowState | None]) -> None:
        self.tap, self.states, self.prompt_seen = tap, states, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the prompt (causal) or the decoder start ids (seq2seq)
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.states), -1)[:, -1].tolist()
        for state, token in zip(self.states, tokens):
            if state is not None:
                self.tap.push(state, int(token))

    def end(self) -> None:
        pass


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0


class BatchWorker:
    """The thread that owns the models: takes jobs from the queue and answers them in batches."""

    def __init__(self, pipe: Answerer, queue: BatchQueue, max_batch: int, wait_s: float) -> None:
        self.pipe, self.queue, self.max_batch, self.wait_s = pipe, queue, max_batch, wait_s
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name="rag-batch-worker", daemon=True)

    def start(self) -> BatchWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        for job in self.queue.close():
            job.emit("error", ApiError(503, "the server is shutting down: retry against a running server", "server_error"))
        self._thread.join(timeout)

    def _run(self) -> None:
        while (jobs := self.queue.take(self.max_batch, self.wait_s)) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                if not job.cancelled:
                    groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._process(key, group)

    def _process(self, key: tuple, group: list[Job]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(group)
        self.stats.largest = max(self.stats.largest, len(group))
        try:
            if key[0] == "search":
                self._search(key, group)
            else:
                self._answer(key[1], group)
        except InputError as e:
            if len(group) > 1:  # one bad question must not fail the others: answer them one by one
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

    def _answer(self, settings: GenSettings, group: list[Job]) -> None:
        pipe = self.pipe
        with use_settings(pipe, settings, self.max_batch), TokenTap(pipe.model, pipe.tokenizer, group, settings.max_new_tokens) as tap:
            answers = pipe.answer_batch([j.text for j in group])
        for job, answer in zip(group, answers):
            usage = tap.finish(job, answer)
            job.emit("done", (answer, usage))

    def _search(self, key: tuple, group: list[Job]) -> None:
        _, k, hybrid = key
        hybrid = self.pipe.cfg.hybrid if hybrid is None else hybrid  # None: as the server retrieves for answers
        results = self.pipe.retriever.search_batch([j.text for j in group], k, hybrid)
        for job, hits in zip(group, results):
            job.emit("done", hits)
