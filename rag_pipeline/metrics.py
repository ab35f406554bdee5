"""Answer metrics: SQuAD exact match and token F1 of a generated answer against gold answers,
and SQuAD 2.0's figures over answerable and unanswerable questions (:func:`squad2_scores`).

Generated answers cite documents as ``[n]``; :func:`extract_answer` strips those markers (and
any ``Answer:`` preamble) before scoring, so a citation never costs a match. An item with no
gold answers is unanswerable: the reference is then the abstention sentence. A yes/no question
(a gold answer that is just "yes" or "no") scores by polarity (:func:`polarity`): "Yes, he did."
matches "yes" exactly, "No [1]" scores 0 against it.
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


def _norm(text: str) -> str:
    text = _CITATION.sub(" ", text.lower()).replace("’", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


# Close paraphrases of ABSTAIN, matched at the start of the (normalized) generation.
_ABSTAIN_PATTERNS = [re.compile(p) for p in (
    r"^(the |these |provided |given )*(documents?|context|passages?|texts?)( provided| given)? (do|does|did) ?n[o']?t (contain|include|provide|mention|say|state|give|answer|specify|have)",
    r"^(the |these |provided |given )*(documents?|context|passages?|texts?)( provided| given)? (contain|contains|include|includes|provide|provides|mention|mentions) no ",
    r"^(i|we) (can ?not|can't|am unable to|are unable to|could not|couldn't|do not|don't) (answer|find|determine|know|tell)",
    r"^(there is|there's) no (answer|information|mention)",
    r"^(no|not enough) (answer|information) (is |was )?(found|given|provided|available|in)",
    r"^(the )?answer (is not|isn't|cannot be) (found|given|provided|in|determined)",
    r"^(unanswerable|not answerable|cannot be answered)",
    # the tuned model's own variants, any subject: "The papers / manuscripts / documentation don't contain the answer."
    r"^(the |these |provided |given )*[a-z]+( provided| given)? (do|does|did) ?n[o']?t (contain|include|provide|have|give) (the |an |any )?(answer|information)( to (the|this|your) question)?$",
)]


def is_abstention(text: str) -> bool:
    """Whether a generation is the fixed :data:`ABSTAIN` sentence or a close paraphrase of it."""
    norm = _norm(text)
    if not norm:
        return False
    return norm.startswith(_norm(ABSTAIN)) or any(p.search(norm) for p in _ABSTAIN_PATTERNS)


_OPEN_CITATION = re.compile(r"\[[\d\s,;]*$")  # "[1" while a citation is being written


def may_become_abstention(prefix: str) -> bool:
    """Whether a generation that starts with ``prefix`` could still be an abstention (:func:`is_abstention`).

    A server streaming an answer holds its text back while this is True, since the final answer
    would then be :data:`ABSTAIN` rather than the paraphrase: "The papers" may go on "don't contain
    the answer.", "In 1066" may not. Once False it stays False for every continuation.
    """
    import regex  # partial matching; a dependency of transformers too

    norm = _norm(_OPEN_CITATION.sub("", prefix))
    whole = _norm(ABSTAIN)
    if whole.startswith(norm) or norm.startswith(whole):
        return True
    return any(regex.match(p.pattern, norm, partial=True) for p in _ABSTAIN_PATTERNS)


def _golds(answers: list[str]) -> list[str]:
    return [a for a in answers if a.strip()] or [ABSTAIN]


_POLAR = {"yes": "yes", "no": "no"}


def polarity(text: str) -> str | None:
    """``"yes"`` or ``"no"`` when an answer opens with that word ("Yes, he did." -> "yes"), else None."""
    first = normalize_answer(extract_answer(text)).split()[:1]
    return _POLAR.get(first[0]) if first else None


def yes_no_gold(answers: list[str]) -> str | None:
    """The polarity of a yes/no question: ``"yes"``/``"no"`` when a gold answer is exactly that word, else None."""
    for a in answers:
        norm = normalize_answer(a)
        if norm in _POLAR:
            return norm
    return None


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer, else 0.0; for a
    yes/no question (:func:`yes_no_gold`), 1.0 when the prediction's :func:`polarity` matches."""
    gold = yes_no_gold(answers)
    if gold is not None:
        return float(polarity(prediction) == gold)
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
    """SQuAD token F1: the best over gold answers of the harmonic mean of token precision and recall;
    for a yes/no question, 1.0 or 0.0 by polarity (as :func:`exact_match`)."""
    if yes_no_gold(answers) is not None:
        return exact_match(prediction, answers)
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


def squad2_scores(predictions: list[str], answers: list[list[str]], answerable: list[bool]) -> dict[str, float | int | None]:
    """SQuAD 2.0's figures (rates in [0, 1]; None when their questions are absent).

    An abstention (:func:`is_abstention`) scores 0 on an answerable question and 1 on an
    unanswerable one; any other answer to an unanswerable question scores 0.

    Returns:
        ``has_em``/``has_f1`` (answerable questions), ``noans_acc`` (unanswerable ones),
        ``overall_em``/``overall_f1`` (all), ``false_abstain_rate`` (answerable questions
        abstained on), ``has_n``, ``noans_n``, ``yesno_acc`` (yes/no questions answered with the
        right polarity, an abstention counting as wrong) and ``yesno_n``.
    """
    if not len(predictions) == len(answers) == len(answerable):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answer lists, {len(answerable)} flags")
    has_em, has_f1, noans, abstained, yesno = [], [], [], [], []
    for pred, golds, ok in zip(predictions, answers, answerable):
        out = is_abstention(pred)
        if ok and any(g.strip() for g in golds):
            if yes_no_gold(golds) is not None:
                yesno.append(0.0 if out else exact_match(pred, golds))
            abstained.append(out)
            has_em.append(0.0 if out else exact_match(pred, golds))
            has_f1.append(0.0 if out else f1(pred, golds))
        else:
            noans.append(float(out))

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    n = len(has_em) + len(noans)
    return {"has_em": mean(has_em), "has_f1": mean(has_f1), "noans_acc": mean(noans),
            "overall_em": (sum(has_em) + sum(noans)) / n if n else None,
            "overall_f1": (sum(has_f1) + sum(noans)) / n if n else None,
            "false_abstain_rate": mean([float(a) for a in abstained]), "has_n": len(has_em), "noans_n": len(noans),
            "yesno_acc": mean(yesno), "yesno_n": len(yesno)}
