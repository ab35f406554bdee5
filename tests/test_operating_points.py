"""scripts/operating_points.py: a run's predictions re-scored at other thresholds, as ask would withhold them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import REPO, load_script


def _script():
    return load_script("operating_points")


def record(question: str, margin: float, answer: str, gold: list[str], answerable: bool = True) -> dict:
    return {"question": question, "margin": margin, "answerable": answerable, "gold": gold, "abstained": False,
            "abstain_reason": None, "raw": answer, "prediction": answer, "scores": {"f1": 1.0 if answerable else None},
            "context": "retrieved", "system": "adapter"}


RECORDS = [record("Is the tower in Paris?", 5.0, "Yes [1]", ["yes"]),
           record("Where is the tower?", 5.0, "Paris [1]", ["Paris"]),
           record("Who built the bridge?", 0.5, "Eiffel [1]", [], answerable=False)]


def test_a_yes_no_answer_stays_shown_where_the_threshold_never_saw_one() -> None:
    op = _script()
    never = {"yes_no_questions": 0}
    assert [op.at_threshold(r, 1.0)[0] for r in RECORDS] == [True, True, False]
    assert [op.at_threshold(r, 1.0, never, opened=True)[0] for r in RECORDS] == [False, True, False]
    assert [op.at_threshold(r, 1.0, {"yes_no_questions": 2}, opened=True)[0] for r in RECORDS] == [True, True, False]
    assert [op.at_threshold(r, 1.0, never, opened=False)[0] for r in RECORDS] == [True, True, False]
    spans = [{**RECORDS[0], "raw": "the tower [1]"}]  # not opened with yes or no: withheld as any answer
    assert op.at_threshold(spans[0], 1.0, never, opened=True)[0]
    fig = op.figures(RECORDS, 1.0, never, opened=True)
    assert fig["has_f1"] == 0.5 and fig["false_abstain_rate"] == 0.5 and fig["noans_acc"] == 0.0
    fig = op.figures(RECORDS, 0.0, never, opened=True)
    assert fig["noans_acc"] == 1.0 and fig["has_f1"] == 0.5


def test_the_run_and_the_calibration_decide_whether_yes_no_answers_are_exempt(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # read_adapter_meta wants weights beside the metadata
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    for counted, opening, exempt in ((0, "yes-or-no", True), (4, "yes-or-no", False), (0, "free", False), (0, None, False)):
        meta = json.loads((REPO / "adapters" / "smollm2-disfl-qa" / "rag_pipeline.json").read_text())
        meta["abstention"] = {"free": {"threshold": 1.0, "yes_no_questions": counted}}
        (adapter / "rag_pipeline.json").write_text(json.dumps(meta))
        metrics = run / "metrics.json"
        metrics.unlink(missing_ok=True)
        if opening is not None:
            metrics.write_text(json.dumps({"config": {"yes_no_questions": opening}}))
        monkeypatch.setattr(sys, "argv", ["operating_points.py", str(run / "predictions.jsonl"), "--adapter", str(adapter)])
        _script().main()
        out = capsys.readouterr().out
        assert ("yes/no answers never withheld" in out) == exempt, (counted, opening)
        stored = next(line for line in out.splitlines() if "(stored)" in line)
        false_abstentions = float(stored.rstrip(" |").split("|")[-2])  # the column before citation precision
        assert false_abstentions == (50.0 if exempt else 100.0), (counted, opening, stored)


def test_citation_precision_where_the_run_judged_every_citation_and_calibrates_rule_on_the_run() -> None:
    op = _script()

    def rec(margin: float, gold: list[str], raw: str, f1: float | None, holds: list[bool], withheld: bool = False) -> dict:
        return {"question": "Where is it?", "margin": margin, "answerable": bool(gold), "gold": gold, "raw": raw,
                "abstained": withheld, "abstain_reason": "calibration" if withheld else None,
                "scores": {"f1": f1, "cited_holds_answer": [] if withheld else holds}}

    records = [rec(1.0, ["Paris"], "Paris [1]", 1.0, [True]), rec(2.0, ["Lyon"], "Nice [2]", 0.0, [False]),
               rec(3.0, [], "Nice [1]", None, [False]), rec(4.0, ["Rome"], "Rome and Milan [1]", None, [], withheld=True)]
    stored = op.figures(records, 3.5)  # the run's own: three answers shown, one of two judged citations holds its answer
    assert (stored["answers"], stored["citation_precision"], stored["false_abstain_rate"]) == (3, 0.5, 1 / 3)
    fewer = op.figures(records, 1.5)
    assert (fewer["answers"], fewer["citation_precision"], fewer["noans_acc"]) == (1, 1.0, 1.0)
    more = op.figures(records, 5.0)  # shows the answer the run withheld, whose citations the run never judged
    assert more["answers"] == 4 and more["citation_precision"] is None and more["has_f1"] == 0.5
    # calibrate's rule, over calibrate.sweep's candidates (midpoints between margins): the highest overall F1 under the
    # ceiling (2.5: 0.5 against 4.5's 0.375) ...
    t, fig = op.calibrated(records, None, False, 0.5)
    assert t == 2.5 and fig["overall_f1"] == 0.5 and fig["false_abstain_rate"] == 1 / 3
    # ... under a ceiling that only showing every answerable answer meets: the threshold above every margin ...
    t, fig = op.calibrated(records, None, False, 0.2)
    assert t == math.inf and fig["false_abstain_rate"] == 0.0
    # ... the same threshold as calibrate's own choose_threshold on the same margins and F1 ...
    from rag_pipeline.eval.calibrate import choose_threshold

    for ceiling in (0.5, 0.2):
        chosen = choose_threshold([r["margin"] for r in records], [1.0, 0.0, 0.0, 0.5], [bool(r["gold"]) for r in records], ceiling)
        assert op.calibrated(records, None, False, ceiling)[0] == chosen["threshold"]
    # ... and where no threshold meets the ceiling (a question the retrieval threshold answered has no margin and
    # abstains at every threshold), the fewest false abstentions
    held = {**rec(0.0, ["Rome"], "", None, []), "margin": None, "abstained": True, "abstain_reason": "retrieval"}
    t, fig = op.calibrated([held, rec(1.0, ["Paris"], "Paris [1]", 1.0, [True])], None, False, 0.0)
    assert t == math.inf and fig["false_abstain_rate"] == 0.5
