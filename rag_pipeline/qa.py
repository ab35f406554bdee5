"""The shared QA format, read by every command that takes questions.

One JSON object per line: ``question`` (str), ``answer`` (str or list of str), and optional
``id`` (default: derived from the question), ``doc_id`` (the document holding the answer) and
``answerable`` (default true).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rag_pipeline.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    doc_id: str | None = None
    answerable: bool = True
    where: str = field(default="", compare=False)  # "file:line" it was read from, for messages


def parse_qa(obj: dict, where: str) -> QAItem:
    """One QA record; ``where`` (``file:line``) prefixes any error."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a QA line must be a JSON object with 'question' and 'answer'")
    question = obj.get("question")
    if not isinstance(question, str):
        raise InputError(f"{where}: missing or non-string 'question': every QA line needs one")
    answer = obj.get("answer", [])
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answer' must be a string or a list of strings, got {answer!r}")
    answerable = obj.get("answerable", True)
    if not isinstance(answerable, bool):
        raise InputError(f"{where}: 'answerable' must be true or false, got {answerable!r}")
    qid = obj.get("id") or "q-" + hashlib.sha256(question.encode()).hexdigest()[:12]
    doc_id = obj.get("doc_id")
    return QAItem(str(qid), question, [a for a in answers if a.strip()], None if doc_id is None else str(doc_id), answerable, where)


def load_qa(path: str | Path) -> list[QAItem]:
    """All QA items of a JSONL file; malformed lines name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"QA file {path} does not exist: pass a JSONL file with 'question' and 'answer' per line")
    items = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg}): fix or remove that line") from None
            items.append(parse_qa(obj, f"{path}:{lineno}"))
    if not items:
        raise InputError(f"QA file {path} holds no questions: add JSON lines with 'question' and 'answer'")
    return items


def unique_questions(items: list[QAItem]) -> list[QAItem]:
    """The items with exact repeats counted once (warned); blank questions and reused ids are errors.

    Raises:
        InputError: a blank question, or one id used for two different records (each with its file:line).
    """
    blank = [it for it in items if not it.question.strip()]
    if blank:
        raise InputError(f"{blank[0].where}: blank question ({len(blank)} in all): write the question or remove the line")
    first: dict[str, QAItem] = {}
    out = []
    for it in items:
        seen = first.setdefault(it.id, it)
        if seen is it:
            out.append(it)
        elif seen != it:
            raise InputError(f"{it.where}: id {it.id} is already used at {seen.where} for a different question or answer: "
                             "give each question its own id (ids default to a hash of the question text)")
    if len(out) < len(items):
        log.warning("%d repeated question lines (same id, question and answers) were counted once", len(items) - len(out))
    return out
