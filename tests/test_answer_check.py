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


def test_cited_problem_reads_the_cited_passages_else_all_shown() -> None:
    from rag_pipeline.answer.check import cited_problem

    shown = ["Paris is the capital of France.", "Lyon lies on the Rhone."]
    assert cited_problem("Lyon [1]", [1], shown, False) == "unsupported"  # cites a passage without it
    assert cited_problem("Lyon [2]", [2], shown, False) is None
    assert cited_problem("Lyon", [], shown, False) is None  # no citation: every shown passage counts
    assert cited_problem("Lyon [7]", [7], shown, False) is None  # a number past the shown ones is no citation
    assert cited_problem("The [1]", [1], shown, False) == "no_content"


@pytest.mark.parametrize("question,answer,problem", [
    ("How much British military was in North America?", "no [2]", "no_content"),  # a yes/no answer to a wh-question
    ("What river does Lyon lie on?", "No, the Rhone [2]", None),  # its words are checked as any answer's
    ("What river does Paris lie on?", "Yes, the Seine [1]", "unsupported"),
    ("Was the capital Paris or Lyon?", "Yes [1]", "no_content"),  # one of two is asked for
    ("Can you name the capital?", "Yes [1]", "no_content"),  # a request
    ("Is Paris the capital of France?", "Yes [1]", None),
    ("Lyon lies on the Rhone?", "No [2]", None),  # no opening auxiliary, yet it may be answered yes or no
])
def test_yes_no_answers_pass_only_where_the_question_may_be_answered_so(question: str, answer: str, problem: str | None) -> None:
    from rag_pipeline.answer.check import cited_problem
    from rag_pipeline.answer.polar import may_be_yes_no

    shown = ["Paris is the capital of France.", "Lyon lies on the Rhone."]
    assert cited_problem(answer, [int(answer[-2])], shown, may_be_yes_no(question)) == problem
