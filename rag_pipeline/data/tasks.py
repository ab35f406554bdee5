"""Tasks beyond the short answer as RAFT training targets: cited summaries and JSON extraction.

``build-raft-dataset --task qa=0.6,summary=0.2,extract=0.2`` draws each example's task from the
mixture with the example's own seeded RNG (:func:`draw`). The prompt shows the task's request
exactly as ``ask --task summary|extract`` shows it (:func:`asked`), and the target is written by
rules from the oracle passage, without a model:

- ``summary``: the oracle's sentence that holds the answer, then up to two more of its sentences
  that share content words with the question (else the next sentence), in passage order, each lightly compressed
  (parentheses dropped) and ending `` [n].`` with the oracle's number: the form the summary
  grammar decodes (:mod:`rag_pipeline.answer.summary`). Distractors are never cited. Without the
  oracle, or for an unanswerable question, the abstention.
- ``extract``: ``{"answer": the answer as the oracle spells it, "quote": the oracle's sentence that
  holds it}`` under :data:`EXTRACT_SCHEMA`, compact, as the JSON decoder writes it; both null
  without the oracle or for an unanswerable question (the structured form of abstention).

Summary and extract examples abstain without the oracle whatever ``--no-oracle-target`` says. An
example whose summary the grammar cannot hold (the answer's sentence has a full stop inside,
"St. Louis") or whose oracle holds no sentence supporting the answer stays a ``qa`` example; the
builder counts these.
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

from rag_pipeline.answer import structured, summary
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.prompt import ABSTAIN, sentence_spans, support_span
from rag_pipeline.support import content_tokens, recall
from rag_pipeline.textnorm import contains_answer

TASKS = ("qa", "summary", "extract")
EXTRACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": ["string", "null"]}, "quote": {"type": ["string", "null"]}},
    "required": ["answer", "quote"],
    "additionalProperties": False,
}
_ABBREVIATION = re.compile(r"(?:^|\s)(?:[A-Z][a-z]{0,2}|[a-z])$")  # a sentence ending "St", "Dr", "Mrs" or one letter: cut at an abbreviation
SUMMARY_SENTENCES = 3  # the answer's sentence and up to two more about the question

_PARENS = re.compile(r"\s*\([^()]*\)")
_SPACES = re.compile(r"\s+")
_TEXT = re.compile(r"[A-Z0-9\"'][^\[\]\n.!?]{2,%d}" % summary.MAX_SENTENCE_CHARS)  # a sentence the grammar's TEXT holds


def parse_mixture(spec: str) -> dict[str, float]:
    """``qa`` -> {"qa": 1.0}; ``qa=0.6,summary=0.2,extract=0.2`` -> the shares, summing to 1.

    Raises:
        ConfigError: an unknown task, a weight that is not a non-negative number, or all weights zero.
    """
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in TASKS:
            raise ConfigError(f"--task {spec!r}: unknown task {name!r}; choose from {', '.join(TASKS)}, "
                              "or a mixture such as qa=0.6,summary=0.2,extract=0.2")
        try:
            weight = float(value) if value.strip() else 1.0
        except ValueError:
            raise ConfigError(f"--task {spec!r}: the weight of {name} is {value!r}, not a number") from None
        if not math.isfinite(weight) or weight < 0 or name in weights:
            raise ConfigError(f"--task {spec!r}: give each task once with a weight >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"--task {spec!r}: no task has a positive weight; e.g. --task qa or --task qa=0.6,summary=0.2,extract=0.2")
    return {name: weights[name] / total for name in TASKS if weights.get(name)}


def draw(mixture: dict[str, float], rng: random.Random) -> str:
    """One task drawn from ``mixture`` (a single task draws nothing)."""
    if len(mixture) == 1:
        return next(iter(mixture))
    u, edge = rng.random(), 0.0
    for name, share in mixture.items():
        edge += share
        if u < edge:
            return name
    return name


def asked(task: str, question: str, schema: dict[str, Any] | None = None) -> str:
    """The request as the prompt shows it for ``task`` (``ask`` asks through this too): the question, or the task's
    instruction around it (a JSON answer's with ``schema``, default :data:`EXTRACT_SCHEMA`)."""
    if task == "summary":
        return summary.instruction(question)
    if task == "extract":
        return structured.instruction(question, EXTRACT_SCHEMA if schema is None else schema)
    return question


def _compressed(sentence: str, answers: list[str] | None = None) -> str | None:
    """The sentence without parentheses (but those holding an answer), its final stop and extra spaces; None when the
    summary grammar cannot hold it."""
    text = _PARENS.sub(lambda m: m.group(0) if answers and contains_answer(m.group(0), answers) else "", sentence)
    text = _SPACES.sub(" ", text).strip().rstrip(".").strip()
    text = text[:1].upper() + text[1:]
    return text if _TEXT.fullmatch(text) else None


def summary_sentences(question: str, passage: str, answers: list[str]) -> list[str] | None:
    """The summary's sentences from ``passage`` (without citations), or None when the answer's sentence
    cannot be found or written in the grammar."""
    span = support_span(passage, answers)
    first = _compressed(passage[span[0]:span[1]], answers) if span else None
    if first is None or (any(contains_answer(passage, [a]) for a in answers) and not contains_answer(first, answers)):
        return None
    words = set(content_tokens(question))
    others = []
    for s, e in sentence_spans(passage):
        if e <= span[0] or s >= span[1]:
            text = _compressed(passage[s:e])
            score = recall(question, passage[s:e]) if words else 0.0
            if text is not None and score > 0:
                others.append((score, s, text))
    chosen = sorted(others, key=lambda x: (-x[0], x[1]))[: SUMMARY_SENTENCES - 1] + [(1.0, span[0], first)]
    if len(chosen) == 1:  # nothing else is about the question: the sentence after the answer's, for context
        after = next((_compressed(passage[s:e]) for s, e in sentence_spans(passage) if s >= span[1]), None)
        chosen += [(0.0, span[1], after)] if after else []
    return [t for _, _, t in sorted(chosen, key=lambda x: x[1])]


def given_summary(text: str) -> list[str] | None:
    """A record's own summary as the target's sentences (each is then cited with the oracle), or None when the
    summary grammar cannot hold it: a sentence it cannot write, or more sentences than it allows."""
    said = [_compressed(text[s:e]) for s, e in sentence_spans(text)]
    if any(x is not None and _ABBREVIATION.search(x) for x in said[:-1]):  # "St. Louis" was cut into two sentences
        return None
    return said if said and len(said) <= summary.MAX_SENTENCES and all(said) else None


def summary_target(sentences: list[str] | None, position: int) -> str:
    """The cited summary of the oracle at 0-based ``position`` (-1: not shown, or nothing to say: the abstention)."""
    if position < 0 or not sentences:
        return ABSTAIN
    return " ".join(f"{s} [{position + 1}]." for s in sentences)


def extract_target(passage: str | None, answers: list[str]) -> str | None:
    """The JSON object of an extract example: the answer as ``passage`` spells it (a whole-word match, in the sentence
    that holds it first) and that sentence; nulls without a passage or answers; None when the passage holds neither
    (the example is written as qa instead)."""
    value = quote = None
    if passage is not None and answers:
        span = support_span(passage, answers)
        if span is None:
            return None
        quote = _SPACES.sub(" ", passage[span[0]:span[1]]).strip()
        value = next((m.group(0) for a in answers for text in (quote, passage)
                      for m in [re.search(rf"(?<!\w){re.escape(a.strip())}(?!\w)", text, re.IGNORECASE)] if a.strip() and m), answers[0])
    return _compact_json({"answer": value, "quote": quote})


def _compact_json(value: Any) -> str:
    """``value`` as the constrained JSON decoder writes it: compact, non-ASCII kept, DEL escaped (llguidance's JSON
    strings hold no raw DEL; json.dumps leaves it unescaped)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("\x7f", "\\u007f")


SCHEMA_SAMPLE = 200  # records whose own JSON answers a schema is inferred from


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))  # bool first: it is an int


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "null")


def _schema_of_values(values: list[Any]) -> dict[str, Any]:
    """The schema of one field from the values the records give it; null is always allowed (the abstention)."""
    types = {_json_type(v) for v in values}
    if {"integer", "number"} <= types:
        types.discard("integer")
    schema: dict[str, Any] = {"type": sorted(types - {"null"}) + ["null"]}
    if "object" in types:
        schema.update(infer_schema([v for v in values if isinstance(v, dict)], sample=len(values))
                      | {"type": schema["type"]})
    if "array" in types:
        items = [x for v in values if isinstance(v, list) for x in v]
        schema["items"] = _schema_of_values(items) if items else {"type": ["string", "null"]}
    if len(schema["type"]) == 1:
        schema["type"] = schema["type"][0]
    return schema


def infer_schema(objects: list[dict[str, Any]], sample: int = SCHEMA_SAMPLE) -> dict[str, Any]:
    """A JSON schema for the records' own JSON answers, from the first ``sample`` of them: every key seen becomes a
    required property (in the order first seen) whose type is the types seen, plus null (the abstention, where the
    documents do not say); no other property is allowed.

    Raises:
        InputError: no object to infer from, or objects without any key.
    """
    objects = objects[:sample]
    values: dict[str, list[Any]] = {}
    for obj in objects:
        for key, value in obj.items():
            values.setdefault(key, []).append(value)
    if not values:
        raise InputError("no record's 'extract' object has a field to infer a JSON schema from: give the fields in the "
                         "records, or pass --schema FILE")
    return {"type": "object", "properties": {k: _schema_of_values(v) for k, v in values.items()},
            "required": list(values), "additionalProperties": False}


def _nullable(schema: Any) -> bool:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind == "null" or (isinstance(kind, list) and "null" in kind)


def _conformed(obj: Any, schema: Any) -> Any:
    """``obj`` as the constrained decoder writes it under ``schema``: an object's fields in the order of its
    properties (recursively), a property it lacks as null where the schema allows null (else left out), its other
    fields after them; anything else as it is."""
    if not isinstance(obj, dict) or not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return obj
    props = schema["properties"]
    value = {k: _conformed(obj[k], sub) if k in obj else None for k, sub in props.items() if k in obj or _nullable(sub)}
    return {**value, **{k: v for k, v in obj.items() if k not in props}}


def given_extract(obj: dict[str, Any] | None, schema: dict[str, Any]) -> str | None:
    """A record's own JSON answer as the target under ``schema``: its fields in the order of the schema's properties
    (nested objects too), a field it lacks as null where the schema allows null, compact as the JSON decoder writes it;
    ``obj`` None (the oracle not shown, or the question unanswerable): every field null. None when that object does
    not validate against the schema (the example is written as qa instead)."""
    import jsonschema

    value = _conformed({} if obj is None else obj, schema)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return _compact_json(value) if validator(schema).is_valid(value) else None
