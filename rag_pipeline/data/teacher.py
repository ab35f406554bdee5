"""Teacher models for ``build-raft-dataset``: chain-of-thought targets and question writing.

One small Protocol, :class:`Teacher` (a chat completion: messages in, text out; ``chat_batch``
for many), with three implementations chosen by a spec string through :data:`TEACHERS`:

- ``fake`` - deterministic, no model; for tests.
- ``hf:MODEL`` - a local Hugging Face model (id resolved offline, or a path), loaded by
  :func:`rag_pipeline.generator.load_generator`, greedy and batched like the generator itself.
- ``openai:URL#MODEL`` - an OpenAI-compatible ``/chat/completions`` endpoint, via urllib, with
  a timeout per request and a bounded number of attempts.

The chain-of-thought prompt follows RAFT (gorilla/raft ``generate_instructions_gen``); the
question-writing prompts live in :mod:`rag_pipeline.data.questions`. Whatever the teacher writes, the
final ``<ANSWER>:`` line is the gold answer, so a wrong teacher can spoil the reasoning but never
the label.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.generator import generate_answers, load_generator
from rag_pipeline.prompt import escape_specials, special_strings

log = logging.getLogger(__name__)

BEGIN_QUOTE, END_QUOTE, ANSWER_TAG = "##begin_quote##", "##end_quote##", "<ANSWER>:"

COT_SYSTEM = "You are a helpful question answerer who can provide an answer given a question and relevant context."
COT_USER = (
    "Question: {question}\nContext: {context}\n\n"
    "Answer this question using the information given in the context above. First provide step-by-step reasoning "
    f"on how to answer the question. In the reasoning, when you copy sentences from the context, put them between "
    f"{BEGIN_QUOTE} and {END_QUOTE}. End your response with the final answer in the form {ANSWER_TAG} $answer."
)


class Teacher(Protocol):
    """A chat model: ``messages`` (role/content dicts) in, the assistant's reply out."""

    name: str

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        ...

    def chat_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[str]:
        """One reply per conversation, in order (batched where the backend can)."""
        ...


class FakeTeacher:
    """Deterministic stand-in, no model: quotes the first context sentence for chain-of-thought; as
    a question writer, blanks the answer out of its sentence ("Which words complete: ... ____?"),
    and answers such a question from a passage by filling the blank."""

    name = "fake"

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        user = messages[-1]["content"]
        if "\nContext: " in user:
            context = user.split("\nContext: ", 1)[1].split("\n\nAnswer this question", 1)[0]
            first = re.split(r"(?<=[.!?])\s+", context.strip(), maxsplit=1)[0]
            return f"The context says {BEGIN_QUOTE}{first}{END_QUOTE} which answers the question.\n{ANSWER_TAG} (see above)"
        passage = _section(user, "Passage")
        if "Question:" in user:
            return fill_blank(passage, _section(user, "Question"))
        return cloze_question(passage, _section(user, "Answer"))

    def chat_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[str]:
        return [self.chat(m, max_new_tokens) for m in conversations]


BLANK = "____"
_CLOZE = re.compile(rf"Which words complete: (.*){re.escape(BLANK)}(.*)\?$")


def _section(text: str, name: str) -> str:
    """The text after ``name:`` up to the next blank line ('' when absent)."""
    m = re.search(rf"(?:^|\n){name}:\s*(.*?)(?:\n\n|$)", text, re.DOTALL)
    return m.group(1).strip() if m else ""


def cloze_question(passage: str, answer: str) -> str:
    """The passage sentence holding ``answer`` with the answer blanked out, as a question; '' when absent."""
    sentence = next((s for s in re.split(r"(?<=[.!?])\s+", passage) if answer and answer in s), "")
    return f"Which words complete: {sentence.replace(answer, BLANK, 1).rstrip('.!?')}?" if sentence else ""


def fill_blank(passage: str, question: str) -> str:
    """The words of ``passage`` that fill a :func:`cloze_question`'s blank; 'unknown' when they cannot be found."""
    m = _CLOZE.match(question.strip())
    start = passage.find(m.group(1)) if m else -1
    if start < 0:
        return "unknown"
    rest = passage[start + len(m.group(1)) :]
    end = rest.find(m.group(2)) if m.group(2) else len(re.split(r"[.!?](?:\s|$)", rest, maxsplit=1)[0])
    return rest[:end].strip() if end > 0 else "unknown"


class HFTeacher:
    """A local Hugging Face model (resolved offline): its chat template, greedy decoding, batched.

    Loaded by :func:`rag_pipeline.generator.load_generator` and decoded by
    :func:`rag_pipeline.generator.generate_answers`, like the generator itself.
    """

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.name = f"hf:{model}"
        # The checkpoint's own dtype, as the teacher has always run.
        self.model, self.tokenizer, self.kind = load_generator(model, device=device, dtype=None)

    def _text(self, messages: list[dict[str, str]]) -> str:
        # Chunk text is untrusted: its special-token strings must not become chat turns.
        specials = special_strings(self.tokenizer)
        messages = [{**m, "content": escape_specials(m["content"], specials)} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"  # base or seq2seq models: the plain text

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        return self.chat_batch([messages], max_new_tokens)[0]

    def chat_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[str]:
        texts = [self._text(m) for m in conversations]
        return generate_answers(self.model, self.tokenizer, self.kind, texts, max_new_tokens=max_new_tokens, batch_size=max(len(texts), 1))


class _Retry(Exception):
    """A failed request worth trying again (timeout, refused connection, 5xx/408/429, unreadable reply)."""


class OpenAITeacher:
    """An OpenAI-compatible endpoint (vLLM, llama.cpp server, ...): ``openai:URL#MODEL``, temperature 0.

    The API key, when the server needs one, comes from ``$OPENAI_API_KEY``. Each request gets
    ``timeout`` seconds; timeouts, connection errors, HTTP 408/429/5xx and replies that are not
    chat completions are retried ``retries`` times in all (backoff doubling from ``backoff``
    seconds), then fail with one line naming the URL and the last error. Other HTTP errors
    (401, 404, ...) fail at once.
    """

    def __init__(self, spec: str, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0) -> None:
        url, _, model = spec.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise ConfigError(f"'openai:{spec}' must look like openai:http://host:port/v1#model-name")
        if retries < 1 or timeout <= 0:
            raise ConfigError(f"request retries must be >= 1 and timeout > 0, got {retries} and {timeout}")
        self.url, self.model = url.rstrip("/") + "/chat/completions", model
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.name = f"openai:{spec}"

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0}).encode()
        for attempt in range(1, self.retries + 1):
            try:
                return self._post(body)
            except _Retry as e:
                last = str(e)
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** (attempt - 1))
        raise InputError(f"{self.url} failed after {self.retries} attempts (last: {last}): check the URL, the model name "
                         "and that the server is up")

    def chat_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256) -> list[str]:
        return [self.chat(m, max_new_tokens) for m in conversations]

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e.read())
            if e.code in (408, 429) or e.code >= 500:
                raise _Retry(f"HTTP {e.code} ({detail})") from None
            raise InputError(f"{self.url} answered HTTP {e.code} ({detail}): check the URL, the model name and $OPENAI_API_KEY") from None
        except (TimeoutError, socket.timeout):
            raise _Retry(f"timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"timed out after {self.timeout:g} s") from None
            raise _Retry(f"cannot connect: {e.reason}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except json.JSONDecodeError:
            raise _Retry(f"malformed JSON in the reply: {_one_line(raw)!r}") from None
        except (KeyError, IndexError, TypeError):
            raise _Retry(f"the reply is not a chat completion (no choices[0].message.content): {_one_line(raw)!r}") from None
        if not isinstance(content, str):
            raise _Retry(f"the reply's message content is {type(content).__name__}, not text")
        return content.strip()


def _one_line(raw: bytes, limit: int = 120) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_detail(raw: bytes) -> str:
    """An HTTP error body's message: OpenAI's ``{"error": {"message": ...}}``, else its first characters."""
    try:
        err = json.loads(raw).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg.strip():
            return _one_line(msg.encode())
    except (json.JSONDecodeError, AttributeError):
        pass
    return _one_line(raw) or "no body"


@dataclass(frozen=True)
class TeacherOptions:
    """How a teacher is run: where (hf), and the request timeout and attempts (openai)."""

    device: str = "cpu"  # hf: where the model runs (build-raft-dataset passes its --device)
    timeout: float = 60.0
    retries: int = 3


# spec prefix -> factory taking the rest of the spec and the options
TEACHERS: dict[str, Callable[[str, TeacherOptions], Teacher]] = {
    "fake": lambda _, o: FakeTeacher(),
    "hf": lambda rest, o: HFTeacher(rest, device=o.device),
    "openai": lambda rest, o: OpenAITeacher(rest, timeout=o.timeout, retries=o.retries),
}


def load_teacher(spec: str, options: TeacherOptions | None = None) -> Teacher:
    """``fake``, ``hf:MODEL`` or ``openai:URL#MODEL``; an unknown kind lists the known ones."""
    kind, _, rest = spec.partition(":")
    if kind not in TEACHERS:
        raise ConfigError(f"unknown teacher '{spec}': use one of {', '.join(f'{k}:...' if k != 'fake' else k for k in TEACHERS)}")
    if kind != "fake" and not rest:
        raise ConfigError(f"teacher '{spec}' needs a model after the colon, e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    return TEACHERS[kind](rest, options or TeacherOptions())


def write_cot(teacher: Teacher, question: str, context: str, answer: str) -> str:
    """RAFT's chain-of-thought target: the teacher's reasoning, then ``<ANSWER>: answer`` (always the gold one)."""
    reply = teacher.chat([{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": COT_USER.format(question=question, context=context)}])
    reasoning = reply.split(ANSWER_TAG, 1)[0].strip()
    return f"{reasoning}\n{ANSWER_TAG} {answer}" if reasoning else f"{ANSWER_TAG} {answer}"
