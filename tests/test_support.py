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


# --------------------------------------------------------------------------------------------- oracle


class _Chunk:
    def __init__(self, cid: str, text: str) -> None:
        self.id, self.text = cid, text


class _Hit:
    def __init__(self, chunk: _Chunk, rank: int) -> None:
        self.chunk, self.rank = chunk, rank


TOWER = [_Chunk("a", "The fair opened in May 1889 on the Champ de Mars. Crowds came from all of Europe."),
         _Chunk("b", "The tower was finished in March 1889. It was built by the company of Gustave Eiffel."),
         _Chunk("c", "Gustave Eiffel also designed bridges. His company built a frame for a statue.")]


def test_gold_passage_for_a_paraphrased_answer() -> None:
    from rag_pipeline.support import gold_passage

    answer = ["The tower was completed in March of 1889."]
    hits = [_Hit(TOWER[0], 1), _Hit(TOWER[2], 2)]  # the supporting chunk was not even retrieved
    assert gold_passage(answer, True, hits, TOWER, free_form=True) == (TOWER[1], None)
    # Span data keeps the verbatim rule: no chunk holds this answer, so there is no oracle.
    assert gold_passage(answer, True, hits, TOWER, free_form=False) == (None, "unsupported")


def test_gold_passage_for_an_answer_spread_over_two_sentences() -> None:
    from rag_pipeline.support import gold_passage

    answer = ["Gustave Eiffel's company finished the tower in March 1889."]
    # Chunk c holds half of it (Eiffel, company), chunk b both sentences that hold all of it.
    assert gold_passage(answer, True, [_Hit(TOWER[2], 1), _Hit(TOWER[1], 2)], TOWER, free_form=True) == (TOWER[1], None)


def test_gold_passage_ties_go_to_the_better_rank_and_weak_support_is_no_oracle() -> None:
    from rag_pipeline.support import gold_passage

    twins = [_Chunk("x", "Kellsford harbour was built for the herring fleet long ago."),
             _Chunk("y", "Long ago the herring fleet had Kellsford harbour built.")]
    answer = ["The harbour at Kellsford was built for herring boats."]
    assert gold_passage(answer, True, [_Hit(twins[1], 1), _Hit(twins[0], 2)], twins, free_form=True)[0] is twins[1]
    assert gold_passage(answer, True, [_Hit(twins[0], 1), _Hit(twins[1], 2)], twins, free_form=True)[0] is twins[0]
    # Without a gold document: the retrieved chunk must support the answer.
    weak = [_Hit(_Chunk("w", "The harbour is busy in summer."), 1)]
    assert gold_passage(answer, True, weak, None, free_form=True) == (None, "unsupported")
    assert gold_passage(answer, True, weak + [_Hit(twins[0], 2)], None, free_form=True) == (twins[0], None)
    # A record's own context is its oracle even when it supports the answer weakly.
    assert gold_passage(answer, True, [], [weak[0].chunk], free_form=True) == (None, "unsupported")
    assert gold_passage(answer, True, [], [weak[0].chunk], free_form=True, given=True) == (weak[0].chunk, None)


def test_gold_passage_keeps_the_verbatim_rule_first() -> None:
    from rag_pipeline.support import gold_passage

    hits = [_Hit(TOWER[2], 1), _Hit(TOWER[1], 2)]
    # Both b and c hold "Gustave Eiffel": the best-ranked one among the gold chunks wins, as before.
    assert gold_passage(["Gustave Eiffel"], True, hits, TOWER, free_form=True) == (TOWER[2], None)
    assert gold_passage(["Gustave Eiffel"], True, hits, TOWER[:2], free_form=True) == (TOWER[1], None)
    assert gold_passage(["x"], False, hits, TOWER) == (TOWER[0], None)  # unanswerable: the first gold chunk
    assert gold_passage(["x"], True, hits, []) == (None, "not_indexed")
