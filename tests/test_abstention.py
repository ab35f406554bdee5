"""The calibrated abstention's stored threshold and rule (rag_pipeline.answer.abstention)."""

from __future__ import annotations

import math

import pytest

from rag_pipeline.answer.abstention import abstention_of, from_json, to_json, withhold
from rag_pipeline.answer.settings import AnswerSettings
from rag_pipeline.errors import ConfigError


def test_withhold_applies_threshold_and_bias_and_needs_a_calibration() -> None:
    cal = {"threshold": 1.0}
    assert withhold(1.5, cal) and not withhold(0.5, cal)
    assert not withhold(1.5, cal, bias=1.0)  # a positive bias answers more
    assert withhold(0.5, cal, bias=-1.0)
    assert not withhold(5.0, None) and not withhold(None, cal)


def test_a_threshold_calibrated_on_no_yes_no_question_never_withholds_a_yes_no_answer() -> None:
    none, some = {"threshold": 1.0, "yes_no_questions": 0}, {"threshold": 1.0, "yes_no_questions": 3}
    assert not withhold(9.0, none, yes_no=True) and withhold(9.0, none)  # other answers as before
    assert withhold(9.0, some, yes_no=True) and withhold(9.0, cal := {"threshold": 1.0}, yes_no=True)  # counted some, or never counted
    assert not withhold(0.5, cal, yes_no=True) and not withhold(None, some, yes_no=True)


def test_infinite_thresholds_survive_json() -> None:
    row = to_json({"threshold": math.inf, "overall_f1": 0.5})
    assert row["threshold"] == "inf" and from_json(row)["threshold"] == math.inf


def test_abstention_of_applies_a_stored_threshold_only_to_greedy_calibrated_answering() -> None:
    recorded = {"free": to_json({"threshold": math.inf}), "grounded": None}
    assert abstention_of(recorded, AnswerSettings()) == {"free": {"threshold": math.inf}}
    assert abstention_of(recorded, AnswerSettings(abstention="greedy")) == {}
    assert abstention_of(None, AnswerSettings(do_sample=True)) == {}  # nothing stored: sampling is fine
    with pytest.raises(ConfigError, match="scores greedy answers"):
        abstention_of(recorded, AnswerSettings(do_sample=True))
    summaries = {"summary": to_json({"threshold": 3.0})}  # another task's threshold does not stop sampling or beams
    assert abstention_of(summaries, AnswerSettings(do_sample=True)) == {"summary": {"threshold": 3.0}}
    assert abstention_of(summaries, AnswerSettings(num_beams=4)) == {"summary": {"threshold": 3.0}}
    with pytest.raises(ConfigError, match="scores greedy answers"):
        abstention_of(summaries, AnswerSettings(task="summary", do_sample=True))
    json_a, json_b = '{"type":"object"}', '{"type":"object","properties":{}}'
    made_under_a = {"extract": to_json({"threshold": 2.0, "schema": json_a})}  # a JSON calibration holds to its schema
    with pytest.raises(ConfigError, match="scores greedy answers"):
        abstention_of(made_under_a, AnswerSettings(task="extract", do_sample=True), json_a)
    assert abstention_of(made_under_a, AnswerSettings(task="extract", do_sample=True), json_b) == {"extract": {"threshold": 2.0, "schema": json_a}}
