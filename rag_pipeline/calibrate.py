"""Calibrated abstention: when to withhold an answer, chosen on the validation split.

The generator scores each question's *null margin*: ``log P(ABSTAIN) - log P(best answer)``,
where the best answer is the greedy one with the abstention sentence banned, and both are
sequence log-likelihoods under the prompt (:func:`rag_pipeline.generator.generate_with_margins`).
The answer is withheld when the margin is above a threshold. As SQuAD 2.0 systems choose their
null-score threshold, :func:`choose_threshold` picks the one that maximises overall F1 (a
correct abstention scores 1, an abstention on an answerable question 0) on the validation split,
subject to a ceiling on false abstentions (15% by default). ``rag-pipeline calibrate`` runs the
adapter through ``ask``'s pipeline on validation questions and stores the result in the adapter's
``rag_pipeline.json`` under ``abstention``; ``ask``, ``evaluate`` and ``serve`` then apply it
(:func:`withhold`), shifted by ``--abstain-bias`` when given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SCORE_NAME = "null_margin"  # log P(abstain) - log P(best non-abstaining answer), both summed over tokens


def sweep(margins: Sequence[float], answered_f1: Sequence[float], answerable: Sequence[bool]) -> list[dict[str, float]]:
    """SQuAD 2.0 figures at every distinct threshold: abstain when ``margin > threshold``.

    Args:
        margins: null margin per question.
        answered_f1: token F1 of the question's best non-abstaining answer (ignored when unanswerable).
        answerable: whether each question has an answer.

    Returns:
        One row per candidate threshold (midpoints between sorted margins, plus both ends), with
        ``threshold``, ``overall_f1``, ``has_f1``, ``noans_acc`` and ``false_abstain_rate``.
    """
    if not len(margins) == len(answered_f1) == len(answerable) or not margins:
        raise ValueError(f"need equal, non-empty lists; got {len(margins)}, {len(answered_f1)}, {len(answerable)}")
    values = sorted(set(float(m) for m in margins))
    cuts = [-math.inf] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [math.inf]
    n_has = sum(bool(a) for a in answerable)
    n_no = len(answerable) - n_has
    rows = []
    for t in cuts:
        has = sum(f for m, f, a in zip(margins, answered_f1, answerable) if a and m <= t)
        false_abs = sum(1 for m, a in zip(margins, answerable) if a and m > t)
        noans = sum(1 for m, a in zip(margins, answerable) if not a and m > t)
        rows.append({"threshold": t, "overall_f1": (has + noans) / len(margins),
                     "has_f1": has / n_has if n_has else math.nan, "noans_acc": noans / n_no if n_no else math.nan,
                     "false_abstain_rate": false_abs / n_has if n_has else 0.0})
    return rows


def choose_threshold(margins: Sequence[float], answered_f1: Sequence[float], answerable: Sequence[bool],
                     max_false_abstain: float = 0.15) -> dict[str, float]:
    """The threshold maximising overall F1 with false abstentions at or under ``max_false_abstain``.

    Ties go to fewer false abstentions, then to the lower threshold. Never abstaining (threshold
    +inf) is always feasible, so there is always an answer.
    """
    if not 0.0 <= max_false_abstain <= 1.0:
        raise ValueError(f"max_false_abstain must be in [0, 1], got {max_false_abstain}")
    feasible = [r for r in sweep(margins, answered_f1, answerable) if r["false_abstain_rate"] <= max_false_abstain + 1e-12]
    return max(feasible, key=lambda r: (round(r["overall_f1"], 12), -r["false_abstain_rate"], -r["threshold"]))


def withhold(margin: float | None, abstention: dict[str, Any] | None, bias: float = 0.0) -> bool:
    """Whether the calibrated rule withholds an answer: ``margin > threshold + bias``.

    A positive ``bias`` answers more (fewer abstentions), a negative one abstains more. Without a
    stored calibration (or a margin) nothing is withheld by this rule.
    """
    if margin is None or not abstention:
        return False
    return margin > float(abstention["threshold"]) + bias


def to_json(row: dict[str, float]) -> dict[str, Any]:
    """A sweep row with infinities written as strings JSON can hold."""
    return {k: (("inf" if v > 0 else "-inf") if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}


def from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_json` for the threshold."""
    t = obj["threshold"]
    return {**obj, "threshold": float(t) if not isinstance(t, str) else (math.inf if t == "inf" else -math.inf)}
