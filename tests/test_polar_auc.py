"""scripts/polar_auc.py: how well an adapter's polar scores tell yes from no, apart from its lean."""

from __future__ import annotations

import pytest
from conftest import load_script


def test_auc_matches_scikit_learn_and_counts_ties_as_half() -> None:
    from sklearn.metrics import roc_auc_score

    s = load_script("polar_auc")
    scores, gold = [0.3, -1.0, 2.0, 0.3, -0.5, 0.1], [True, False, True, False, True, False]
    assert s.auc(scores, gold) == pytest.approx(roc_auc_score(gold, scores))
    assert s.auc([1.0, 1.0], [True, False]) == 0.5 and s.auc([1.0], [True]) is None


def test_summary_separates_the_ranking_from_the_lean() -> None:
    s = load_script("polar_auc")
    # ranks every yes above every no, but leans to "no": with no bias it says yes only to the top one
    scores, gold = [-0.1, -0.2, 0.5, -1.0, -2.0], [True, True, True, False, False]
    r = s.summary(scores, gold, bias=-0.5)
    assert r["roc_auc"] == 1.0 and r["roc_auc_95"] == [1.0, 1.0] and r["gold_yes"] == 3
    assert r["said_yes_at_zero"] == pytest.approx(0.2) and r["accuracy_at_zero"] == pytest.approx(0.6)
    assert r["said_yes_at_bias"] == pytest.approx(0.6) and r["accuracy_at_bias"] == 1.0
    low, high = s.interval([0.0, 1.0, 0.2, 0.9], [False, True, True, False], resamples=500)
    assert 0.0 <= low <= s.auc([0.0, 1.0, 0.2, 0.9], [False, True, True, False]) <= high <= 1.0
