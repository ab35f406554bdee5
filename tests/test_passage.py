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
