"""The pure helpers of scripts/answerability_probe.py."""

import pytest

from conftest import load_script

@pytest.fixture(scope="module")
def probe():
    return load_script("answerability_probe")


def test_abstain_at_false_abstain_budget(probe):
    neg = [float(i) for i in range(100)]  # answerable: 91..99 (9%) lie above the threshold 90.0
    pos = [95.5, 89.0, 99.5, 50.0]
    assert probe.abstain_at(pos, neg, 0.10) == 0.5  # 95.5 and 99.5 lie above it
    s = probe.summary([1.0, 3.0, 2.0, 4.0], [False, False, True, True])  # one of 4 pairs misordered
    assert s["auc"] == 0.75


def test_gold_pairs_uses_zero_based_oracle_position(probe):
    rows = [{"question": "q", "answerable": True, "oracle_position": 0, "documents": [{"text": "gold"}, {"text": "other"}]},
            {"question": "r", "answerable": False, "oracle_position": 1, "documents": [{"text": "other"}, {"text": "para"}]}]
    assert probe.gold_pairs(rows) == [("q", "gold", True), ("r", "para", False)]


def test_gold_pairs_leaves_out_rows_without_an_oracle(probe):
    """build-raft-dataset writes -1 for "oracle left out" (RAFT's p_oracle): index -1 would take the last distractor."""
    rows = [{"question": "q", "answerable": True, "oracle_position": 0, "documents": [{"text": "gold"}, {"text": "d"}]},
            {"question": "s", "answerable": True, "oracle_position": -1, "documents": [{"text": "d1"}, {"text": "d2"}]},
            {"question": "t", "answerable": True, "documents": [{"text": "x"}]}]
    assert probe.gold_pairs(rows) == [("q", "gold", True)]
