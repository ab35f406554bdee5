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


def test_squad2_figures_by_hand() -> None:
    from rag_pipeline.metrics import squad2_figures

    # answerable: answered (F1 .5, EM 0), abstained, answered (F1 1, EM 1); unanswerable: abstained, answered
    fig = squad2_figures([False, True, False, True, False], [True, True, True, False, False], [0.5, 0.9, 1.0, 0.3, 0.7],
                         [0.0, 1.0, 1.0, 0.0, 1.0])
    assert fig == {"has_em": pytest.approx(1 / 3), "has_f1": pytest.approx(1.5 / 3), "noans_acc": 0.5,
                   "overall_em": pytest.approx(2 / 5), "overall_f1": pytest.approx(2.5 / 5), "false_abstain_rate": pytest.approx(1 / 3),
                   "has_n": 3, "noans_n": 2}
    assert squad2_figures([], [], []) == {"has_em": None, "has_f1": None, "noans_acc": None, "overall_em": None, "overall_f1": None,
                                          "false_abstain_rate": None, "has_n": 0, "noans_n": 0}
    with pytest.raises(ValueError, match="one of each per question"):
        squad2_figures([True], [True, False], [0.0])


def test_evaluate_and_the_calibration_sweep_report_squad2_figures_alike() -> None:
    """The three reports of SQuAD 2.0's figures (evaluate's, calibrate's threshold sweep, training's
    validation) are one computation: the same abstentions and scores give the same figures."""
    import math

    from rag_pipeline.eval.calibrate import sweep
    from rag_pipeline.eval.evaluate import squad2
    from rag_pipeline.metrics import squad2_figures, squad2_scores

    margins, f1s, answerable = [2.0, -1.0, math.inf, 0.5, -3.0], [0.4, 1.0, 0.8, 0.2, 0.6], [True, True, True, False, False]
    ems = [float(f == 1.0) for f in f1s]
    rows = sweep(margins, f1s, answerable)
    assert len(rows) == 6  # both ends and the midpoints between the 5 distinct margins
    for row in rows:
        out = [m > row["threshold"] or m == math.inf for m in margins]  # +inf always abstains
        fig = squad2_figures(out, answerable, f1s, ems)
        assert (row["overall_f1"], row["has_f1"], row["noans_acc"], row["false_abstain_rate"]) == (
            fig["overall_f1"], fig["has_f1"], fig["noans_acc"], fig["false_abstain_rate"])
        records = [{"answerable": a, "abstained": o, "scores": {"em": e, "f1": f}} for a, o, f, e in zip(answerable, out, f1s, ems)]
        assert squad2(records) == {k: round(fig[k], 4) for k in ("has_em", "has_f1", "noans_acc", "overall_em", "overall_f1")}
    preds, golds = ["Paris [1]", ABSTAIN, "Rome"], [["Paris"], ["Oslo"], []]
    assert {k: v for k, v in squad2_scores(preds, golds, [True, True, False]).items() if not k.startswith("yesno")} == squad2_figures(
        [False, True, False], [True, True, False], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
