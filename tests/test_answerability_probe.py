"""The pure helpers of scripts/answerability_probe.py, against scikit-learn's ROC AUC."""

import importlib.util
import random
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "answerability_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("answerability_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auc_matches_sklearn_with_ties(probe):
    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    scores = [rng.choice([0.0, 0.5, 1.0, 1.5]) + rng.random() * (i % 3 == 0) for i in range(200)]
    labels = [rng.random() < 0.3 + 0.2 * (s > 1) for s in scores]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    assert probe.auc(pos, neg) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_abstain_at_false_abstain_budget(probe):
    neg = [float(i) for i in range(100)]  # answerable: 91..99 (9%) lie above the threshold 90.0
    pos = [95.5, 89.0, 99.5, 50.0]
    assert probe.abstain_at(pos, neg, 0.10) == 0.5  # 95.5 and 99.5 lie above it
    s = probe.summary([1.0, 2.0, 3.0, 4.0], [False, False, True, True])
    assert s["auc"] == 1.0


def test_gold_pairs_uses_zero_based_oracle_position(probe):
    rows = [{"question": "q", "answerable": True, "oracle_position": 0, "documents": [{"text": "gold"}, {"text": "other"}]},
            {"question": "r", "answerable": False, "oracle_position": 1, "documents": [{"text": "other"}, {"text": "para"}]},
            {"question": "s", "answerable": True, "oracle_position": None, "documents": [{"text": "x"}]}]
    assert probe.gold_pairs(rows) == [("q", "gold", True), ("r", "para", False)]
