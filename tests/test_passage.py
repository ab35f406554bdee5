"""rag_pipeline.passage: the passage shape, and the gold-passage and distractor rules that RAFT
training data and evaluation's oracle context share."""

from __future__ import annotations

import pytest

from conftest import FakeChunk as C
from conftest import FakeHit as H
from rag_pipeline import passage as PS
from rag_pipeline.errors import InputError
from rag_pipeline.qa import QAItem


GOLD = [C("g0", "g", "Intro without it."), C("g1", "g", "The sky is blue.", position=1), C("g2", "g", "Blue it is, the sky.", position=2)]
ITEM = QAItem("q", "colour?", ["blue"], "g", True)


def test_gold_passage_rank_or_position_where_several_chunks_hold_the_answer() -> None:
    hits = [H(C("x", "x", "blue elsewhere")), H(GOLD[2]), H(GOLD[1])]
    assert PS.gold_passage(ITEM, hits, GOLD, order="rank", fallback_to_first=False) == GOLD[2]  # best-ranked of the gold doc
    assert PS.gold_passage(ITEM, hits, GOLD, order="position", fallback_to_first=True) == GOLD[1]  # first by position
    assert PS.gold_passage(ITEM, [], GOLD, order="rank", fallback_to_first=False) == GOLD[1]  # not retrieved: by position


def test_gold_passage_when_no_chunk_holds_the_answer_or_there_is_no_document() -> None:
    item = QAItem("q", "?", ["green"], "g", True)
    assert PS.gold_passage(item, [], GOLD, order="rank", fallback_to_first=False) is None
    assert PS.gold_passage(item, [], GOLD, order="position", fallback_to_first=True) == GOLD[0]
    unans = QAItem("u", "?", [], "g", False)
    assert PS.gold_passage(unans, [], GOLD, "rank", False) == PS.gold_passage(unans, [], GOLD, "position", True) == GOLD[0]
    assert PS.gold_passage(ITEM, [H(GOLD[1])], [], "rank", False) is None  # its document is not in the index
    no_doc = QAItem("n", "?", ["blue"], None, True)
    hits = [H(C("a", "a", "red")), H(C("b", "b", "blue sky"))]
    assert PS.gold_passage(no_doc, hits, None, "rank", False).id == PS.gold_passage(no_doc, hits, [], "position", True).id == "b"


def test_hard_distractors_skip_gold_doc_answers_and_repeats() -> None:
    hits = [H(GOLD[0]), H(C("a", "a", "Also blue.")), H(C("b", "b", "bee")), H(C("c", "c", "bee")), H(C("d", "d", "sea")), H(C("e", "e", "dee"))]
    assert [c.id for c in PS.hard_distractors(hits, 2, "g", GOLD[1], ["blue"])] == ["b", "d"]
    assert [c.id for c in PS.hard_distractors(hits, 3, "g", GOLD[1], ["blue"], taken=[GOLD[1]])] == ["g1", "b", "d"]


def test_passage_shapes() -> None:
    c = C("a", "d", "text", "T", "src", 3)
    assert list(PS.from_chunk(c, 0.1234567891, 2)) == ["rank", "score", "id", "doc_id", "title", "source", "position", "text"]
    assert PS.from_chunk(c, 0.1234567891, 2)["score"] == 0.123457 and "rank" not in PS.from_chunk(c)
    assert PS.document(PS.from_chunk(c)) == {"id": "a", "title": "T", "text": "text"}
    given = PS.from_given({"text": "x", "id": "i"}, 1)
    assert given == {"rank": 1, "score": None, "id": "i", "doc_id": "i", "title": "", "source": "", "position": 0, "text": "x", "truncated": False}
    with pytest.raises(InputError, match="context document 2 must be a dict"):
        PS.from_given({"title": "no text"}, 2)


# ------------------------------------------------------------------------------- free-form answers

TOWER = [C("a", "t", "The fair opened in May 1889 on the Champ de Mars. Crowds came from all of Europe."),
         C("b", "t", "The tower was finished in March 1889. It was built by the company of Gustave Eiffel.", position=1),
         C("c", "t", "Gustave Eiffel also designed bridges. His company built a frame for a statue.", position=2)]


def _q(answer: str, doc_id: str | None = "t") -> QAItem:
    return QAItem("q", "?", [answer], doc_id, True)


def test_gold_passage_of_a_paraphrased_answer() -> None:
    item = _q("The tower was completed in March of 1889.")
    hits = [H(TOWER[0], rank=1), H(TOWER[2], rank=2)]  # the supporting chunk was not even retrieved
    assert PS.gold_passage(item, hits, TOWER, "rank", False, free_form=True) == TOWER[1]
    assert PS.gold_passage(item, hits, TOWER, "position", True, free_form=True) == TOWER[1]  # evaluate's oracle too
    # Span data keeps the verbatim rule: no chunk holds this answer, so there is no oracle.
    assert PS.gold_passage(item, hits, TOWER, "rank", False) is None


def test_gold_passage_of_an_answer_spread_over_two_sentences() -> None:
    item = _q("Gustave Eiffel's company finished the tower in March 1889.")
    # Chunk c holds half of it (Eiffel, company) and ranks first; chunk b holds both sentences that say all of it.
    assert PS.gold_passage(item, [H(TOWER[2], rank=1), H(TOWER[1], rank=2)], TOWER, "rank", False, free_form=True) == TOWER[1]


def test_free_form_ties_go_to_the_better_rank_and_weak_support_is_no_oracle() -> None:
    twins = [C("x", "h", "Kellsford harbour was built for the herring fleet long ago."),
             C("y", "h", "Long ago the herring fleet had Kellsford harbour built.", position=1)]
    item = _q("The harbour at Kellsford was built for herring boats.", doc_id="h")
    assert PS.gold_passage(item, [H(twins[1], rank=1), H(twins[0], rank=2)], twins, "rank", False, free_form=True) == twins[1]
    assert PS.gold_passage(item, [H(twins[0], rank=1), H(twins[1], rank=2)], twins, "rank", False, free_form=True) == twins[0]
    # Without a gold document: the retrieved chunk must hold min_support of the answer's content words.
    weak = H(C("w", "w", "The harbour is busy in summer."), rank=1)
    free = _q("The harbour at Kellsford was built for herring boats.", doc_id=None)
    assert PS.gold_passage(free, [weak], None, "rank", False, free_form=True) is None
    assert PS.gold_passage(free, [weak, H(twins[0], rank=2)], None, "rank", False, free_form=True) == twins[0]
    # A record's own context is its oracle even when it supports the answer weakly.
    assert PS.gold_passage(free, [], [weak.chunk], "rank", False, free_form=True) is None
    assert PS.gold_passage(free, [], [weak.chunk], "rank", False, free_form=True, given=True) == weak.chunk


def test_free_form_distractors_never_support_the_answer() -> None:
    answer = ["The engineer Agnes Corran designed the Tarn Point lighthouse in 1868."]
    restated = C("r", "other", "In 1868 the Tarn Point lighthouse, a design of Agnes Corran, was finished.")
    unrelated = C("u", "other2", "Visitors to the lighthouse stop for tea at the cafe.")
    assert PS.usable_distractor(restated, "gold", None, answer, [])  # span rule: the sentence is not there verbatim
    assert not PS.usable_distractor(restated, "gold", None, answer, [], free_form=True)
    assert PS.usable_distractor(unrelated, "gold", None, answer, [], free_form=True)
    hits = [H(restated, rank=1), H(unrelated, rank=2)]
    assert PS.hard_distractors(hits, 2, "gold", None, answer, free_form=True) == [unrelated]
