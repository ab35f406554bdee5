"""scripts/yes_no_answers.py: what a run said to yes/no questions, beside its other questions."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import load_script


def _rec(i: int, question: str, gold: list[str], prediction: str, f1: float = 0.0, abstained: bool = False, **kw) -> dict:
    return {"id": f"q{i}", "question": question, "gold": gold, "prediction": prediction, "abstained": abstained,
            "answerable": True, "doc_id": "d", "scores": {"f1": f1}, "context": "retrieved", "system": "tuned", **kw}


RECORDS = [_rec(0, "Is the cat on the red mat?", ["yes"], "Yes! [1]"),        # all its words in the story
           _rec(1, "Did the dog bark loudly?", ["Yes."], "No, it did not [1]"),  # none; the gold normalised
           _rec(2, "Is Paris in Spain?", ["no"], "No. [1]"),
           _rec(3, "Is the mat blue?", ["no"], "Nobody [1]"),                  # a span, not the word no
           _rec(4, "Was it late?", ["It was", "yes"], "", abstained=True),      # yes as a later gold answer
           _rec(5, "Is the sky green?", ["yes"], "Yes [1]", doc_id=None),      # its document unknown
           _rec(6, "Where is Paris?", ["France"], "France [1]", f1=1.0),
           _rec(7, "What colour is the mat?", ["red"], "", abstained=True),
           _rec(8, "What is missing?", [], "", abstained=True, answerable=False)]
TEXTS = {"d": "The cat sat on the red mat. Paris is in France."}


def test_breakdown_scores_yes_no_as_evaluate_does_and_counts_what_was_said_to_each_gold_answer() -> None:
    b = load_script("yes_no_answers").breakdown(RECORDS, TEXTS)
    assert (b["questions"], b["yes_no"], b["other"]) == (9, 6, {"q6": 1.0, "q7": 0.0})
    assert b["other_f1"] == 0.5 and b["accuracy"] == 3 / 6
    assert [b["table"][f"yes->{s}"] for s in ("yes", "no", "span", "abstained")] == [2, 1, 0, 1]
    assert [b["table"][f"no->{s}"] for s in ("yes", "no", "span", "abstained")] == [0, 1, 1, 0]
    assert b["gold_yes_word_share"] == {"yes": (1.0, 1), "no": (0.0, 1)} and b["no_document"] == 1


def test_a_run_without_yes_no_questions_has_no_accuracy_and_the_table_compares_runs_paired(tmp_path, monkeypatch, capsys) -> None:
    s = load_script("yes_no_answers")
    assert s.breakdown(RECORDS[6:], TEXTS)["accuracy"] is None
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d", "text": TEXTS["d"]}) + "\n")
    better = [{**r, "abstained": False, "scores": {"f1": 1.0}} if r["id"] == "q7" else r for r in RECORDS]
    runs = []
    for name, records in (("a", RECORDS), ("b", better)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append(str(path))
    monkeypatch.setattr(sys, "argv", ["yes_no_answers.py", "--documents", str(docs), *runs])
    assert s.main() == 0
    out = capsys.readouterr()
    rows = [line for line in out.out.splitlines() if line.startswith("| ") and ".jsonl" in line]
    assert len(rows) == 2 and "| 2 | 50.0 | - | 6 | 50.0 |" in rows[0] and "| 2 | 100.0 | +50.00 [" in rows[1], rows
    assert "1 gold-yes questions without their document" in out.err


def test_a_run_of_two_tuned_systems_asks_which(tmp_path, monkeypatch) -> None:
    s = load_script("yes_no_answers")
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({**r, "system": sysname}) + "\n" for r in RECORDS for sysname in ("x", "y")))
    with pytest.raises(SystemExit, match="holds 2 tuned systems"):
        s.run_records(str(path), None)
    assert len(s.run_records(str(path), "y")) == len(RECORDS)
