"""Answer metrics: SQuAD exact match and token F1 of a generated answer against gold answers.

Generated answers cite documents as ``[n]``; :func:`extract_answer` strips those markers (and
any ``Answer:`` preamble) before scoring, so a citation never costs a match. An item with no
gold answers is unanswerable: the reference is then the abstention sentence.
"""

from __future__ import annotations

import collections
import re

from rag_pipeline.prompt import ABSTAIN
from rag_pipeline.textnorm import normalize_answer

_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_ANSWER_MARK = re.compile(r"(?:##\s*)?answer\s*:", re.IGNORECASE)


def extract_answer(generated: str) -> str:
    """The answer part of a generation: text after the last ``Answer:`` marker, citations removed."""
    parts = _ANSWER_MARK.split(generated)
    text = parts[-1] if len(parts) > 1 else generated
    return _CITATION.sub("", text).strip()


def _golds(answers: list[str]) -> list[str]:
    return [a for a in answers if a.strip()] or [ABSTAIN]


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer, else 0.0."""
    pred = normalize_answer(extract_answer(prediction))
    return float(any(pred == normalize_answer(g) for g in _golds(answers)))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: list[str]) -> float:
    """SQuAD token F1: the best over gold answers of the harmonic mean of token precision and recall."""
    pred = normalize_answer(extract_answer(prediction)).split()
    return max(_f1_one(pred, normalize_answer(g).split()) for g in _golds(answers))


def answer_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Mean EM and F1 (in [0, 1]) over paired predictions and gold-answer lists."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answer lists")
    n = max(len(predictions), 1)
    return {
        "em": sum(exact_match(p, a) for p, a in zip(predictions, answers)) / n,
        "f1": sum(f1(p, a) for p, a in zip(predictions, answers)) / n,
    }
