"""scripts/paired_f1.py: two runs compared question by question, against hand-computed scores and evaluate's own overall F1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script
from rag_pipeline.eval.evaluate import squad2

def _script():
    return load_script("paired_f1")


def _rec(qid: str, answerable: bool, abstained: bool, f1: float, system: str = "s", context: str = "retrieved") -> dict:
    return {"id": qid, "system": system, "context": context, "answerable": answerable, "abstained": abstained,
            "scores": {"em": float(f1 == 1.0) if answerable else None, "f1": f1 if answerable else None}}


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_per_question_scores_and_the_paired_difference_by_hand(tmp_path: Path) -> None:
    m = _script()
    first = [_rec("q1", True, False, 0.5), _rec("q2", True, True, 0.0), _rec("q3", False, True, 0.0), _rec("q4", False, False, 0.0),
             _rec("q1", True, False, 1.0, context="oracle")]  # another context: left out
    second = [_rec("q1", True, False, 1.0), _rec("q2", True, False, 0.25), _rec("q3", False, False, 0.0), _rec("q4", False, True, 0.0),
              _rec("q5", True, False, 1.0)]  # a question the first run lacks: left out
    a, b = m.per_question(_write(tmp_path / "a.jsonl", first)), m.per_question(_write(tmp_path / "b.jsonl", second))
    assert a == {"q1": 0.5, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    assert b == {"q1": 1.0, "q2": 0.25, "q3": 0.0, "q4": 1.0, "q5": 1.0}
    assert sum(a.values()) / 4 == pytest.approx(squad2(first[:4])["overall_f1"])  # evaluate's figure
    r = m.paired(a, b, resamples=500, seed=1)
    assert r["n"] == 4 and r["a"] == pytest.approx(0.375) and r["b"] == pytest.approx(0.5625)
    assert r["diff"] == pytest.approx((0.5 + 0.25 - 1.0 + 1.0) / 4)
    assert r["low"] <= r["diff"] <= r["high"] and r["low"] < r["high"]
    assert m.paired(a, b, resamples=500, seed=1) == r  # seeded


def test_a_file_of_several_systems_needs_one_named(tmp_path: Path) -> None:
    m = _script()
    path = _write(tmp_path / "two.jsonl", [_rec("q1", True, False, 1.0, system="x"), _rec("q1", True, True, 0.0, system="y")])
    with pytest.raises(SystemExit, match="holds 2 systems"):
        m.per_question(path)
    assert m.per_question(path, system="y") == {"q1": 0.0}
    with pytest.raises(SystemExit, match="no 'oracle' records"):
        m.per_question(path, system="y", context="oracle")
