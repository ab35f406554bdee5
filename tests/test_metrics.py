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


# ----------------------------------------------------------------------------- yes/no questions


@pytest.mark.parametrize("pred,gold,score", [
    ("Yes, he did. [1]", "yes", 1.0), ("yes", "Yes", 1.0), ("No [2]", "no", 1.0),
    ("No, it was built in 1890.", "yes", 0.0), ("Yes", "no", 0.0), ("He did", "yes", 0.0),
])
def test_yes_no_questions_score_by_polarity(pred: str, gold: str, score: float) -> None:
    from rag_pipeline.metrics import exact_match, f1

    assert exact_match(pred, [gold]) == score
    assert f1(pred, [gold]) == score  # token F1 of "yes he did" against "yes" would be 0.5


def test_span_answers_keep_token_f1() -> None:
    from rag_pipeline.metrics import f1, yes_no_gold

    assert yes_no_gold(["Paris"]) is None and yes_no_gold(["no one"]) is None
    assert f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)


def test_squad2_scores_report_yes_no_accuracy() -> None:
    from rag_pipeline.metrics import squad2_scores
    from rag_pipeline.prompt import ABSTAIN

    preds = ["Yes, it is. [1]", "Yes [1]", ABSTAIN, "Paris [1]", ABSTAIN]
    golds = [["yes"], ["no"], ["yes"], ["Paris"], []]
    s = squad2_scores(preds, golds, [True, True, True, True, False])
    assert s["yesno_n"] == 3 and s["yesno_acc"] == pytest.approx(1 / 3)
    assert s["has_f1"] == pytest.approx(2 / 4) and s["noans_acc"] == 1.0
