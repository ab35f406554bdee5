"""Answer metrics: SQuAD exact match and token F1 of a generated answer against gold answers,
and SQuAD 2.0's figures over answerable and unanswerable questions: :func:`squad2_figures` computes
them from per-question outcomes for every caller (``evaluate``, ``calibrate``'s threshold sweep,
training's validation through :func:`squad2_scores`).

Generated answers cite documents as ``[n]``; :func:`extract_answer` strips those markers (and
any ``Answer:`` preamble) before scoring, so a citation never costs a match. An item with no
gold answers is unanswerable: the reference is then the abstention sentence. A yes/no question
(a gold answer that is just "yes" or "no") scores by polarity (:func:`polarity`): "Yes, he did."
matches "yes" exactly, "No [1]" scores 0 against it.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence
from typing import Any

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


def squad2_figures(abstained: Sequence[bool], answerable: Sequence[bool], f1s: Sequence[float],
                   ems: Sequence[float] | None = None) -> dict[str, float | int | None]:
    """SQuAD 2.0's figures from per-question outcomes (rates in [0, 1]; None when their questions are absent).

    An abstention scores 0 on an answerable question and 1 on an unanswerable one; any answer
    to an unanswerable question scores 0.

    Args:
        abstained: whether each question was abstained on, by whatever rule the caller applies
            (the generator's refusal, a retrieval threshold, a calibrated null-margin threshold).
        answerable: whether each question has gold answers to score against.
        f1s: each question's answer F1 (read only where answerable and not abstained).
        ems: each question's exact match, likewise; None: no EM figures (``has_em`` and
            ``overall_em`` are None).

    Returns:
        ``has_em``/``has_f1`` (answerable questions), ``noans_acc`` (unanswerable ones),
        ``overall_em``/``overall_f1`` (all), ``false_abstain_rate`` (answerable questions
        abstained on), ``has_n`` and ``noans_n``.
    """
    n = len(abstained)
    if not len(answerable) == len(f1s) == n or (ems is not None and len(ems) != n):
        raise ValueError(f"{n} abstention flags, {len(answerable)} answerable flags, {len(f1s)} F1s, "
                         f"{'no' if ems is None else len(ems)} EMs: need one of each per question")
    has = [i for i in range(n) if answerable[i]]
    noans = [float(abstained[i]) for i in range(n) if not answerable[i]]
    has_f1 = [0.0 if abstained[i] else float(f1s[i]) for i in has]
    has_em = None if ems is None else [0.0 if abstained[i] else float(ems[i]) for i in has]

    def mean(xs: list[float] | None) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {"has_em": mean(has_em), "has_f1": mean(has_f1), "noans_acc": mean(noans),
            "overall_em": (sum(has_em) + sum(noans)) / n if n and has_em is not None else None,
            "overall_f1": (sum(has_f1) + sum(noans)) / n if n else None,
            "false_abstain_rate": mean([float(abstained[i]) for i in has]), "has_n": len(has), "noans_n": len(noans)}


def squad2_scores(predictions: list[str], answers: list[list[str]], answerable: list[bool]) -> dict[str, float | int | None]:
    """SQuAD 2.0's figures of generated answers (:func:`squad2_figures`), an abstention being
    :func:`is_abstention`; a question marked answerable without a gold answer counts as unanswerable.

    Returns:
        :func:`squad2_figures`' figures, and ``yesno_acc`` (yes/no questions answered with the
        right polarity, an abstention counting as wrong) and ``yesno_n``.
    """
    if not len(predictions) == len(answers) == len(answerable):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answer lists, {len(answerable)} flags")
    out = [is_abstention(p) for p in predictions]
    has = [bool(ok and any(g.strip() for g in golds)) for golds, ok in zip(answers, answerable)]
    ems = [exact_match(p, g) if h and not o else 0.0 for p, g, h, o in zip(predictions, answers, has, out)]
    f1s = [f1(p, g) if h and not o else 0.0 for p, g, h, o in zip(predictions, answers, has, out)]
    yesno = [e for e, g, h in zip(ems, answers, has) if h and yes_no_gold(g) is not None]  # an abstention's EM is 0
    return {**squad2_figures(out, has, f1s, ems), "yesno_acc": sum(yesno) / len(yesno) if yesno else None, "yesno_n": len(yesno)}


def rouge_l(prediction: str, answers: list[str]) -> float:
    """ROUGE-L F-measure of the answer part of ``prediction``, the best over gold answers (0 when none)."""
    from rouge_score import rouge_scorer

    pred = extract_answer(prediction)
    golds = [a for a in answers if a.strip()]
    if not golds or not pred:
        return 0.0
    scorer = _rouge_scorer(rouge_scorer)
    return max(scorer.score(g, pred)["rougeL"].fmeasure for g in golds)


_SCORER: list[Any] = []


def _rouge_scorer(module: Any) -> Any:
    if not _SCORER:  # building it loads NLTK's stemmer tables: once per process
        _SCORER.append(module.RougeScorer(["rougeL"], use_stemmer=False))
    return _SCORER[0]


def mean_of(values: Iterable[float | bool | None]) -> float | None:
    """The mean of the values that are not None, rounded to 4 places; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None
