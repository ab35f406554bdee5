"""Optional teacher model for ``build-raft-dataset``: chain-of-thought targets and question generation.

One small Protocol, :class:`Teacher` (a chat completion: messages in, text out), with three
implementations chosen by a spec string through :data:`TEACHERS`:

- ``fake`` - deterministic, no model; for tests.
- ``hf:MODEL`` - a local Hugging Face model (id resolved offline, or a path), greedy decoding.
- ``openai:URL#MODEL`` - an OpenAI-compatible ``/chat/completions`` endpoint, via urllib.

The prompts follow RAFT (gorilla/raft ``encode_question_gen`` and ``generate_instructions_gen``).
Whatever the teacher writes, the final ``<ANSWER>:`` line is the gold answer, so a wrong
teacher can spoil the reasoning but never the label.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Protocol

from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.textnorm import contains_answer

log = logging.getLogger(__name__)

BEGIN_QUOTE, END_QUOTE, ANSWER_TAG = "##begin_quote##", "##end_quote##", "<ANSWER>:"

COT_SYSTEM = "You are a helpful question answerer who can provide an answer given a question and relevant context."
COT_USER = (
    "Question: {question}\nContext: {context}\n\n"
    "Answer this question using the information given in the context above. First provide step-by-step reasoning "
    f"on how to answer the question. In the reasoning, when you copy sentences from the context, put them between "
    f"{BEGIN_QUOTE} and {END_QUOTE}. End your response with the final answer in the form {ANSWER_TAG} $answer."
)
QG_SYSTEM = (
    "You are a synthetic question-answer pair generator. Given a chunk of context, write {n} questions a user could ask "
    "that the chunk answers in a few words. Write each pair on two lines: 'Q: question' then 'A: answer', the answer "
    "copied from the chunk."
)


class Teacher(Protocol):
    """A chat model: ``messages`` (role/content dicts) in, the assistant's reply out."""

    name: str

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        ...


class FakeTeacher:
    """Deterministic stand-in: quotes the first context sentence; makes cloze questions from sentences."""

    name = "fake"

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        user = messages[-1]["content"]
        if messages[0]["content"].startswith("You are a synthetic question-answer"):
            n = int(re.search(r"write (\d+) questions", messages[0]["content"]).group(1))
            return "\n".join(f"Q: {q}\nA: {a}" for q, a in _cloze_pairs(user, n))
        context = user.split("\nContext: ", 1)[1].split("\n\nAnswer this question", 1)[0]
        first = re.split(r"(?<=[.!?])\s+", context.strip(), maxsplit=1)[0]
        return f"The context says {BEGIN_QUOTE}{first}{END_QUOTE} which answers the question.\n{ANSWER_TAG} (see above)"


def _cloze_pairs(text: str, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` (question, answer) pairs: each sentence's last capitalized word (not the first word)
    becomes the answer, blanked out in the question."""
    pairs = []
    for sent in re.split(r"(?<=[.!?])\s+", text.strip()):
        names = re.findall(r"(?<=\s)[A-Z]\w+", sent)
        if names:
            pairs.append((f"Which name completes: {sent.replace(names[-1], '____', 1)}?", names[-1]))
        if len(pairs) == n:
            break
    return pairs


class HFTeacher:
    """A local Hugging Face model (resolved offline): its chat template, greedy decoding.

    Loaded by :func:`rag_pipeline.generator.load_generator` and decoded by
    :func:`rag_pipeline.generator.generate_answers`, like the generator itself.
    """

    def __init__(self, model: str, device: str = "cpu") -> None:
        from rag_pipeline.generator import load_generator

        self.name = f"hf:{model}"
        # The checkpoint's own dtype on the CPU, as the teacher has always run.
        self.model, self.tokenizer, self.kind = load_generator(model, device=device, dtype=None)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        from rag_pipeline.generator import generate_answers

        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return generate_answers(self.model, self.tokenizer, self.kind, [text], max_new_tokens=max_new_tokens)[0]


class OpenAITeacher:
    """An OpenAI-compatible endpoint (vLLM, llama.cpp server, ...): ``openai:URL#MODEL``, temperature 0.

    The API key, when the server needs one, comes from ``$OPENAI_API_KEY``.
    """

    def __init__(self, spec: str, timeout: float = 60.0) -> None:
        url, _, model = spec.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise ConfigError(f"teacher 'openai:{spec}' must look like openai:http://host:port/v1#model-name")
        self.url, self.model, self.timeout = url.rstrip("/") + "/chat/completions", model, timeout
        self.name = f"openai:{spec}"

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        import os

        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as e:
            raise InputError(f"teacher endpoint {self.url} failed ({e}): check the URL and that the server is up") from None


# spec prefix -> factory taking the rest of the spec
TEACHERS: dict[str, Callable[[str], Teacher]] = {
    "fake": lambda _: FakeTeacher(),
    "hf": HFTeacher,
    "openai": OpenAITeacher,
}


def load_teacher(spec: str) -> Teacher:
    """``fake``, ``hf:MODEL`` or ``openai:URL#MODEL``; an unknown kind lists the known ones."""
    kind, _, rest = spec.partition(":")
    if kind not in TEACHERS:
        raise ConfigError(f"unknown teacher '{spec}': use one of {', '.join(f'{k}:...' if k != 'fake' else k for k in TEACHERS)}")
    if kind != "fake" and not rest:
        raise ConfigError(f"teacher '{spec}' needs a model after the colon, e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    return TEACHERS[kind](rest)


def write_cot(teacher: Teacher, question: str, context: str, answer: str) -> str:
    """RAFT's chain-of-thought target: the teacher's reasoning, then ``<ANSWER>: answer`` (always the gold one)."""
    reply = teacher.chat([{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": COT_USER.format(question=question, context=context)}])
    reasoning = reply.split(ANSWER_TAG, 1)[0].strip()
    return f"{reasoning}\n{ANSWER_TAG} {answer}" if reasoning else f"{ANSWER_TAG} {answer}"


def generate_questions(teacher: Teacher, chunk_text: str, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` (question, answer) pairs for a chunk; pairs whose answer is not in the chunk are dropped."""
    reply = teacher.chat([{"role": "system", "content": QG_SYSTEM.format(n=n)}, {"role": "user", "content": chunk_text}])
    pairs, question = [], None
    for line in reply.splitlines():
        line = line.strip()
        if line[:2] in ("Q:", "q:"):
            question = line[2:].strip()
        elif line[:2] in ("A:", "a:") and question:
            answer = line[2:].strip()
            if answer and contains_answer(chunk_text, [answer]):
                pairs.append((question, answer))
            question = None
    return pairs[:n]
