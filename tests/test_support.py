"""Answer support: content tokens, recall of free-form answers, the short/long rule, and the supporting span."""

from __future__ import annotations

import pytest

from rag_pipeline import prompt as P
from rag_pipeline.support import content_tokens, is_short, recall, support, supports

KL = ("Kuala Lumpur lies where the Klang and Gombak rivers meet. Malaysia's capital grew from a tin-mining town. "
      "Its name means muddy confluence.")


def test_content_tokens_drop_stopwords_and_meet_plurals() -> None:
    assert content_tokens("The capital cities of Malaysia's states") == {"capital", "city", "malaysia", "state"}
    assert content_tokens("It is what it is.") == frozenset()
    assert content_tokens("in 1889") == {"1889"}


def test_recall_of_a_paraphrased_answer() -> None:
    answer = "Kuala Lumpur is the capital city of Malaysia."
    assert recall(answer, KL) == pytest.approx(4 / 5)  # kuala, lumpur, capital, malaysia of 5 (city is missing)
    assert recall(answer, "Ipoh lies on the Kinta river in Perak.") == 0.0
    assert recall("Kuala Lumpur", KL) == 1.0  # verbatim
    assert recall("It is.", "It is late.") == 1.0 and recall("It is.", "Late.") == 0.0  # no content tokens: verbatim only
    assert support(KL, ["Ipoh", "Kuala Lumpur is the capital city of Malaysia."]) == pytest.approx(0.8)


def test_short_answers_need_the_words_long_answers_the_recall() -> None:
    assert is_short("the Klang and Gombak rivers") and not is_short("Kuala Lumpur is the capital city of Malaysia.")
    assert supports(KL, ["Gombak"], 0.5)
    # A short answer is supported only verbatim: "Klang river" has every content token here but not as a phrase.
    assert not supports(KL, ["Klang river"], 0.1)
    assert supports(KL, ["Kuala Lumpur is the capital city of Malaysia."], 0.8)
    assert not supports(KL, ["Kuala Lumpur is the capital city of Malaysia."], 0.81)
    assert not supports("Putrajaya is the administrative capital of Malaysia.", ["Kuala Lumpur is the capital city of Malaysia."], 0.5)


def test_support_span_quotes_the_best_sentence_or_two() -> None:
    text = ("The fair opened in May. The tower was finished in March 1889. It was built by the company of Gustave Eiffel. "
            "Visitors climbed it by stairs.")
    span = P.support_span(text, ["The tower was completed in March 1889."])
    assert text[span[0] : span[1]] == "The tower was finished in March 1889."
    # An answer spread over two sentences: the shortest run that holds most of it.
    span = P.support_span(text, ["Gustave Eiffel's company finished the tower in March 1889."])
    assert text[span[0] : span[1]] == "The tower was finished in March 1889. It was built by the company of Gustave Eiffel."
    # Verbatim answers keep the old rule; unsupported answers have no span.
    assert P.support_span(text, ["Gustave Eiffel"]) == P.answer_sentence_span(text, ["Gustave Eiffel"])
    assert P.support_span(text, ["Berlin is far away from here."]) is None
    assert P.support_span(text, []) is None


def test_answer_form_of_a_qa_set() -> None:
    from rag_pipeline.support import answer_form

    passage = ["Kuala Lumpur is the capital of Malaysia.", "It was founded in 1857."]
    span = [(["Kuala Lumpur"], passage)] * 9 + [(["Ipoh"], passage)]
    assert answer_form(span) == ("span", 0.9)
    free = [(["Kuala Lumpur is Malaysia's capital city."], passage)] * 3 + [(["1857"], passage)]
    assert answer_form(free) == ("free-form", 0.25)
    assert answer_form([]) == ("span", None)
