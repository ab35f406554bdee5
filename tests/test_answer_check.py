"""The answer check (rag_pipeline.answer.check): which generated answers may be shown."""

from __future__ import annotations

import pytest

from rag_pipeline.answer.check import answer_problem


@pytest.mark.parametrize("answer,passages,problem", [
    ("The [1]", ["The processes of the body."], "no_content"),
    ("The of [2]", ["x"], "no_content"),
    ("The processes [1]", ["The processes of digestion."], "no_content"),  # a refusal cut short: "The processes don't ..."
    ("The papers [2]", ["Papers."], "no_content"),
    ("The Normans [1]", ["The Normans came."], None),
    ("lysozyme and phospholipase A2 [1]", ["Saliva holds lysozyme and phospholipase A2."], None),
    ("beta defensins [1]", ["Saliva holds lysozyme and phospholipase A2."], "unsupported"),
    ("Yes [1]", ["Anything."], None),
    ("No, it was not. [2]", [], None),
    ("Paris", [], "unsupported"),
])
def test_answer_problem_names_junk_and_unsupported_answers(answer: str, passages: list[str], problem: str | None) -> None:
    assert answer_problem(answer, passages) == problem
