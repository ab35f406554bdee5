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
    assert answer_problem(answer, passages, yes_no=True) == problem  # the question may be answered yes or no


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


@pytest.mark.parametrize("cited,expected", [
    ([2], [0]),      # cites the passage with fewer of the question's words: read the first
    ([1], None),     # cites the one most about the question
    ([1, 2], None),  # cites it among others
    ([], None),      # cites nothing
    ([7], None),     # a number past the shown ones is no citation
])
def test_misread_names_the_passages_most_about_the_question(cited: list[int], expected: list[int] | None) -> None:
    from rag_pipeline.answer.check import misread

    shown = ["The Moon is the only natural satellite of Earth.", "Mars has two small moons, Phobos and Deimos."]
    assert misread("What is the only natural satellite of Earth?", shown, cited) == expected


def test_misread_keeps_ties_and_needs_a_word_of_the_question() -> None:
    from rag_pipeline.answer.check import misread

    shown = ["The Moon orbits Earth, its satellite.", "Phobos orbits Mars.", "The Moon orbits Earth as its satellite."]
    assert misread("Which satellite orbits Earth?", shown, [2]) == [0, 2]  # every passage holding the most
    assert misread("???", shown, [2]) is None  # a question without content words
    assert misread("Which comet?", shown, [2]) is None  # no shown passage holds a word of it
    assert misread("Which satellite orbits Earth?", shown[:1], [1]) is None  # one passage: nothing else to read
