"""The pure helpers of scripts/hidden_state_probe.py: re-scoring a run under a withholding rule, and the cutoff."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("hidden_state_probe")


def rec(answerable: bool, f1: float, margin: float = 0.0, withheld_raw: str | None = None) -> dict:
    """A prediction record: shown with ``f1``, or withheld by the margin with ``withheld_raw`` as its raw answer."""
    r = {"question": "Where is it?", "answerable": answerable, "gold": ["Paris"] if answerable else [], "margin": margin,
         "abstained": False, "abstain_reason": None, "raw": "x", "scores": {"f1": f1 if answerable else None}}
    if withheld_raw is not None:
        r.update(abstained=True, abstain_reason="calibration", raw=withheld_raw)
    return r


RECS = [rec(True, 1.0), rec(True, 0.0), rec(True, 0.0, 5.0, withheld_raw="Paris [1]"), rec(False, 0.0), rec(False, 0.0)]


def test_a_rule_re_scores_the_run_with_margin_withheld_answers_shown_as_their_raw(probe):
    fig = probe.figures(RECS, [False] * 5)  # nothing withheld: the third answer is its raw, right
    assert fig["has_f1"] == pytest.approx(2 / 3) and fig["noans"] == 0 and fig["fa"] == 0
    fig = probe.figures(RECS, [False, True, False, True, False])
    assert fig["has_f1"] == pytest.approx(2 / 3) and fig["noans"] == 0.5 and fig["fa"] == pytest.approx(1 / 3)
    assert fig["overall"] == pytest.approx((2 + 1) / 5)


def test_the_cutoff_is_the_best_overall_f1_under_the_false_abstention_ceiling(probe):
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.7])  # the wrong answerable answer scores high, like the unanswerable
    assert probe.choose(RECS, scores, [False] * 5, 0.5) == 0.2  # withhold 0.9, 0.8, 0.7: one false abstention
    assert probe.choose(RECS, scores, [False] * 5, 0.0) == 0.9  # no false abstention allowed: withhold none at 0.9
    assert probe.choose(RECS, scores, [True] * 5, 0.0) == math.inf  # everything withheld already: over the ceiling


def test_paired_difference_is_the_rule_minus_the_base_on_the_same_questions(probe):
    base = [False] * 5
    rule = [False, True, False, True, False]  # a wrong answerable answer withheld (0 -> 0), an unanswerable one (0 -> 1)
    d, lo, hi = probe.paired(RECS, base, rule)
    assert d == pytest.approx(1 / 5) and lo <= d <= hi and lo >= 0.0
    assert probe.paired(RECS, base, base) == (0.0, 0.0, 0.0)


def test_another_domains_answers_withheld_by_the_dev_cutoffs(probe, monkeypatch, tmp_path, capsys):
    """--other-run: answers the run showed that the probe's cutoffs would withhold, added to the run's own abstentions."""
    import json
    import types

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"id": f"q{i}", "question": "Who?", "answerable": True, "gold": ["x"], "abstained": i == 0, "context": "retrieved",
             "system": "a", "margin": 0.0, "abstain_reason": "calibration" if i == 0 else None} for i in range(4)]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(probe, "other_features", lambda *a: ([r["id"] for r in rows], np.array([[3.0], [2.0], [0.5], [-1.0]]), None))
    fitted = types.SimpleNamespace(decision_function=lambda x: x[:, 0])
    args = types.SimpleNamespace(other_run=str(run), adapter="a", other_index="i", readings=((18, "last"), (18, "question")), output=str(tmp_path))
    probe.other(fitted, {"probe": 1.0, "probe + margin": 0.0}, args)
    out = capsys.readouterr().out
    assert "false abstentions 1 (25.0%)" in out  # the run's own: q0
    assert "| probe: 1.00 | 1 | 50.0% |" in out  # q1 (2.0); q0 was withheld already
    assert "| probe + margin: 0.00 | 2 | 75.0% |" in out  # q1 and q2


def test_the_feature_cache_is_keyed_by_the_readings(probe, tmp_path: Path) -> None:
    """Features of other readings are never read from another reading's cache, nor from a cache keyed without readings
    (scripts/order_consistency.py's)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    keys = {probe.cache_key(str(adapter), "idx", None, r) for r in (((18, "last"),), ((18, "last"), (18, "question")), None)}
    assert len(keys) == 3
