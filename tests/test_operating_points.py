"""scripts/operating_points.py: a run's predictions re-scored at other thresholds, as ask would withhold them."""

from __future__ import annotations

import json
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
        false_abstentions = float(stored.rstrip(" |").split("|")[-1])
        assert false_abstentions == (50.0 if exempt else 100.0), (counted, opening, stored)
