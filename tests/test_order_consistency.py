"""scripts/order_consistency.py: the agreement of two answers, and the reversed answers read back from their cache."""

from __future__ import annotations

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def order():
    return load_script("order_consistency")


def test_agreement_is_the_token_f1_of_the_answers_without_citations(order):
    assert order.agreement("the Nile [1]", "Nile [2]") == 1.0  # articles and citations aside, the same answer
    assert order.agreement("Paris [1]", "London [2]") == 0.0
    assert order.agreement("river Nile [1]", "Nile [1]") == pytest.approx(2 / 3)


def test_reversed_answers_come_from_their_own_cache_without_loading_a_model(order, tmp_path):
    adapter, run, cache = tmp_path / "adapter", tmp_path / "run", tmp_path / "dev.json"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    key = order.cache_key(str(adapter), "idx", {"run": str(run.resolve())})
    cache.write_text(json.dumps({"key": key, "answers": {"q1": {"raw": "Nile [2]", "margin": 1.5}}}), encoding="utf-8")
    assert order.swapped(str(adapter), "idx", run, [], cache) == {"q1": {"raw": "Nile [2]", "margin": 1.5}}
    with pytest.raises(SystemExit, match="not this script's answers for this adapter, index and run"):  # another index
        order.swapped(str(adapter), "other-idx", run, [], cache)
    mine = tmp_path / "notes.json"
    mine.write_text("my notes, not JSON", encoding="utf-8")  # a file of the user's: one error line, left as it was
    with pytest.raises(SystemExit, match="pass another --output"):
        order.swapped(str(adapter), "idx", run, [], mine)
    assert mine.read_text(encoding="utf-8") == "my notes, not JSON"


def _rec(margin: float, raw: str, gold: list[str], **kw) -> dict:
    return {"id": "q1", "question": "Which river?", "answerable": bool(gold), "gold": gold, "margin": margin, "raw": raw,
            "abstained": False, "abstain_reason": None, "scores": {"f1": 0.0 if gold else None}, **kw}


def test_the_lower_margin_answer_takes_the_place_of_the_runs_judged_on_the_mean_margin(order):
    r = _rec(3.0, "Paris [1]", ["the Nile"])
    chosen = order.lower_margin(r, {"raw": "Nile [2]", "margin": 1.0})
    assert (chosen["raw"], chosen["margin"], chosen["scores"]["f1"], chosen["abstained"]) == ("Nile [2]", 2.0, 1.0, False)
    kept = order.lower_margin(r, {"raw": "Nile [2]", "margin": 5.0})  # not lower: the run's answer stays, judged on the mean
    assert (kept["raw"], kept["margin"], kept["scores"]) == ("Paris [1]", 4.0, r["scores"])
    assert order.lower_margin(r, {"raw": "Nile [2]", "margin": None}) is r
    refused = order.lower_margin(r, {"raw": "The [1]", "margin": 0.5})  # no content word: refused, as ask's check refuses it
    assert refused["abstained"] and refused["abstain_reason"] == "check"
    assert order.lower_margin(r, {"raw": "No [1]", "margin": 0.5})["abstained"]  # "No" answers no "Which river?"
    assert not order.lower_margin({**r, "question": "Is it the Nile?"}, {"raw": "No [1]", "margin": 0.5})["abstained"]
    assert order.lower_margin(_rec(3.0, "Paris [1]", []), {"raw": "Nile [2]", "margin": 1.0})["scores"]["f1"] is None


def test_a_probe_bias_that_is_not_a_number_is_one_error_line(order, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["order_consistency.py", "--adapter", str(tmp_path), "--run", str(tmp_path),
                                     "--output", str(tmp_path / "o.json"), "--probe-bias=-0.3,low"])
    with pytest.raises(SystemExit, match="--probe-bias '-0.3,low' is not numbers separated by commas"):
        order.main()


def test_the_margin_rule_is_asks_with_its_yes_no_exemption(order, tmp_path):
    """A yes/no answer the run opened with Yes or No is not withheld by a threshold calibrated on no yes/no question; the
    run says whether it opened them (its metrics.json), and a threshold measured on some withholds them as any answer."""
    polar_q, other_q = _rec(5.0, "Yes [1]", ["yes"], question="Is Etna a volcano?"), _rec(5.0, "Etna [1]", ["Etna"], question="Which volcano erupts?")
    unmeasured, measured = {"threshold": 2.0, "yes_no_questions": 0}, {"threshold": 2.0, "yes_no_questions": 7}
    assert [order.by_threshold(r, calibration=unmeasured, opened=True) for r in (polar_q, other_q)] == [False, True]
    assert [order.by_threshold(r, calibration=unmeasured, opened=False) for r in (polar_q, other_q)] == [True, True]
    assert [order.by_threshold(r, calibration=measured, opened=True) for r in (polar_q, other_q)] == [True, True]
    assert not order.by_threshold(other_q, 1.0, calibration=measured, opened=True)  # another margin: under the threshold
    run = tmp_path / "run"
    run.mkdir()
    assert not order.opened_yes_no(run)  # a run that records no setting: free
    (run / "metrics.json").write_text(json.dumps({"config": {"yes_no_questions": "yes-or-no"}}), encoding="utf-8")
    assert order.opened_yes_no(run) and not order.opened_yes_no(run, "retrieved/grounded")


def test_a_run_answered_with_both_orders_is_refused(order, tmp_path, monkeypatch):
    adapter, run = tmp_path / "adapter", tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"config": {"orders": "both"}}), encoding="utf-8")
    monkeypatch.setattr(order, "read_adapter_meta", lambda a: type("M", (), {"abstention": {"free": {"threshold": 2.0}}})())
    monkeypatch.setattr("sys.argv", ["order_consistency.py", "--adapter", str(adapter), "--run", str(run), "--output", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="was answered with --orders both"):
        order.main()
