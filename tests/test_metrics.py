"""rag_pipeline.metrics against hand-computed cases not covered in test_generator.py."""

from __future__ import annotations

import pytest

from rag_pipeline.metrics import answer_scores, exact_match, extract_answer, f1
from rag_pipeline.prompt import ABSTAIN
from rag_pipeline.textnorm import contains_answer, normalize_answer


@pytest.mark.parametrize("text,norm", [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("An apple, a pear and THE plum.", "apple pear and plum"),
    ("  1,889 ", "1889"),
    ("", ""),
    ("theatre", "theatre"),  # articles are whole words only
])
def test_normalize_answer(text: str, norm: str) -> None:
    assert normalize_answer(text) == norm


def test_contains_answer_whole_words() -> None:
    assert contains_answer("It was completed in 1889 for the fair.", ["1889"])
    assert not contains_answer("It was completed in 18890.", ["1889"])
    assert not contains_answer("anything", ["", "  "])


def test_multiple_gold_answers_take_the_best() -> None:
    golds = ["Denver Broncos", "the Broncos", "Broncos"]
    assert exact_match("broncos", golds) == 1.0
    # "Denver" vs "Denver Broncos": P = 1, R = 1/2 -> F1 = 2/3; the other golds share no token.
    assert f1("Denver", golds) == pytest.approx(2 / 3)
    assert f1("Denver Broncos won", golds) == pytest.approx(max(2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)))


def test_empty_prediction_scores_zero() -> None:
    assert exact_match("", ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0
    assert f1("[1]", ["Paris"]) == 0.0  # a bare citation is an empty answer


def test_unanswerable_reference_is_the_abstention() -> None:
    assert exact_match(ABSTAIN, []) == 1.0
    assert f1("Paris", []) == 0.0


def test_f1_counts_repeated_tokens_once_each() -> None:
    # pred "a b b" vs gold "b c": one common token, P = 1/3, R = 1/2 -> F1 = 0.4 (normalization keeps b, c).
    assert f1("x y y", ["y z"]) == pytest.approx(0.4)


def test_extract_answer_without_marker_keeps_text() -> None:
    assert extract_answer("Paris") == "Paris"
    assert extract_answer("Answer: Paris [2]") == "Paris"


def test_answer_scores_means_and_length_check() -> None:
    m = answer_scores(["Paris [1]", "red and blue", ""], [["Paris"], ["blue"], ["x"]])
    assert m["em"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 0.5 + 0) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        answer_scores(["a", "b"], [["a"]])
