"""Threshold search of the calibrated abstention, on hand-made scores."""

from __future__ import annotations

import math

import pytest

from rag_pipeline.eval.calibrate import choose_threshold, sweep


def test_sweep_counts_squad2_figures_at_each_cut() -> None:
    # margins: two answerable (f1 1.0 and 0.5), two unanswerable
    rows = sweep([-2.0, 1.0, 0.0, 3.0], [1.0, 0.5, 0.0, 0.0], [True, True, False, False])
    by_t = {r["threshold"]: r for r in rows}
    assert sorted(by_t) == [-math.inf, -1.0, 0.5, 2.0, math.inf]
    never = by_t[math.inf]  # answer everything
    assert never["overall_f1"] == pytest.approx(1.5 / 4) and never["false_abstain_rate"] == 0.0 and never["noans_acc"] == 0.0
    always = by_t[-math.inf]  # abstain on everything
    assert always["overall_f1"] == pytest.approx(2 / 4) and always["false_abstain_rate"] == 1.0 and always["noans_acc"] == 1.0
    mid = by_t[0.5]  # abstains on margins 1.0 (answerable, f1 .5 lost) and 3.0 (unanswerable, right)
    assert mid["overall_f1"] == pytest.approx((1.0 + 1) / 4) and mid["false_abstain_rate"] == 0.5 and mid["has_f1"] == 0.5


def test_choose_threshold_maximises_overall_f1_under_the_false_abstain_cap() -> None:
    margins = [-3, -2, -1, 0.5, 1, 2, 2.5, 3]
    f1s = [1, 1, 1, 0.2, 0, 0, 0, 0]
    answerable = [True, True, True, True, False, False, False, True]
    free = choose_threshold(margins, f1s, answerable, max_false_abstain=1.0)
    # abstain above 0.75: the three unanswerable right, the answerable at margin 3 (F1 0) lost, the 0.2 answer kept
    assert free["threshold"] == pytest.approx(0.75) and free["false_abstain_rate"] == pytest.approx(0.2)
    assert free["overall_f1"] == pytest.approx((3.2 + 3) / 8)
    capped = choose_threshold(margins, f1s, answerable, max_false_abstain=0.1)
    assert capped["threshold"] == math.inf  # any abstention would cost one of five answerable questions
    assert capped["overall_f1"] == pytest.approx(3.2 / 8)
    never = choose_threshold(margins, f1s, answerable, max_false_abstain=0.0)
    assert never["false_abstain_rate"] == 0.0 and never["threshold"] == math.inf


def test_forced_abstentions_count_at_every_threshold() -> None:
    # the third question's best answer was itself a refusal: it abstains even when nothing else does
    rows = sweep([-1.0, 0.0, math.inf], [1.0, 0.0, 0.0], [True, True, True])
    assert all(r["false_abstain_rate"] >= 1 / 3 for r in rows)
    best = choose_threshold([-1.0, 0.0, math.inf], [1.0, 0.0, 0.0], [True, True, True], max_false_abstain=0.15)
    assert best["false_abstain_rate"] == pytest.approx(1 / 3)  # infeasible cap: the fewest false abstentions


# ---------------------------------------------------------------------------------------------
# The stage: what it leaves out is listed; a file without answers is refused
# ---------------------------------------------------------------------------------------------


class _Said:
    def __init__(self, raw: str, margin: float, passage: str = "Paris is the capital of France.") -> None:
        self.raw, self.margin = raw, margin
        self.retrieved = [{"id": "c1", "doc_id": "d1", "title": "France", "text": passage}]


class _FakePipeline:
    """Answers 'Paris' with a margin of -1 (confident) to every question, from a passage that says so."""

    def answer_batch(self, questions: list[str], margins: bool = False) -> list[_Said]:
        return [_Said("Paris [1]", -1.0) for _ in questions]


def _fake_load(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    from rag_pipeline.answer.ask import Pipeline

    monkeypatch.setattr(Pipeline, "load", staticmethod(lambda cfg, **kw: calls.append(cfg) or _FakePipeline()))


def test_answerable_records_without_an_answer_are_left_out_and_listed(tmp_path, monkeypatch, capsys) -> None:
    """Kept, such a record would count as unanswerable and pull the threshold toward abstaining."""
    import json

    from rag_pipeline.eval.calibrate import CalibrateConfig, main

    calls: list = []
    _fake_load(monkeypatch, calls)
    rows = [{"id": "a", "question": "Capital of France?", "answer": "Paris"}, {"id": "b", "question": "Moon base age?", "answer": [], "answerable": False},
            {"id": "c", "question": "Capital of Peru?", "answer": []}]
    qa = tmp_path / "dev.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(CalibrateConfig(adapter=str(tmp_path / "adapter"), qa=str(qa), dry_run=True)) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 validation questions (1 answerable)")
    assert "left out 1 records: 1 answerable but no answer given" in out and "(c)" in out


def test_a_file_without_answers_is_refused_before_loading_the_model(tmp_path, monkeypatch) -> None:
    from rag_pipeline.eval.calibrate import CalibrateConfig, run
    from rag_pipeline.errors import InputError

    calls: list = []
    _fake_load(monkeypatch, calls)
    qa = tmp_path / "dev.csv"
    qa.write_text("id,question\na,Capital of France?\nb,Capital of Peru?\n")
    with pytest.raises(InputError, match=r"dev\.csv has no answer column .*columns seen: id, question.* --answer-field"):
        run(CalibrateConfig(adapter=str(tmp_path / "adapter"), qa=str(qa), dry_run=True))
    assert calls == []


def test_answers_the_check_refuses_count_as_abstentions(tmp_path, monkeypatch) -> None:
    """'The [1]' and an answer the cited passage does not hold are never shown by ask (the answer check): calibration
    counts them as abstentions at every threshold, so its false-abstention ceiling holds with the check on."""
    import json

    from rag_pipeline.answer.ask import Pipeline
    from rag_pipeline.eval.calibrate import CalibrateConfig, run

    said = [_Said("Paris [1]", -1.0), _Said("The [1]", -2.0), _Said("Lyon [1]", -3.0), _Said("Paris [1]", 5.0)]

    class Scripted:
        def answer_batch(self, questions: list[str], margins: bool = False) -> list[_Said]:
            return said[: len(questions)]

    monkeypatch.setattr(Pipeline, "load", staticmethod(lambda cfg, **kw: Scripted()))
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answer": "Paris"} for i in range(4)]
    qa = tmp_path / "dev.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"adapter": str(tmp_path / "adapter"), "qa": str(qa), "dry_run": True, "limit": 0, "max_false_abstain": 1.0}
    counted = run(CalibrateConfig(**cfg))
    assert counted["answer_check"] == {"counted": True, "refused": 2}
    assert counted["false_abstain_rate"] >= 0.5  # the two refused answers abstain whatever the threshold
    alone = run(CalibrateConfig(**cfg, count_checked=False))
    assert alone["answer_check"] == {"counted": False, "refused": 0} and alone["false_abstain_rate"] == 0.0
