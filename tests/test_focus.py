"""Which parts of the retrieved chunks a prompt shows (``rag_pipeline.answer.focus``): re-ranking and sentence windows."""

from __future__ import annotations

from rag_pipeline.answer.focus import GAP, Idf, focus, rerank, words_of
from rag_pipeline.passage import Passage


def passage(i: int, text: str) -> Passage:
    return {"rank": i, "score": 1.0 / i, "id": f"c{i}", "doc_id": f"d{i}", "title": f"T{i}", "source": "s", "position": 0,
            "text": text, "truncated": False}


WEATHER = passage(1, "The weather was mild in spring. Farmers planted early.")
CATS = passage(2, "Cats sleep most of the day. They hunt at night.")
TREATY = passage(3, "The Treaty of Utrecht was signed in 1713. It ended a long war.")
IDF = Idf.of(p["text"] for p in (WEATHER, CATS, TREATY))


def test_rerank_puts_the_passage_holding_the_questions_words_first() -> None:
    shown = rerank("When was the Treaty of Utrecht signed?", [WEATHER, CATS, TREATY], IDF, 2)
    assert shown == [TREATY, WEATHER]  # whole passages; the rest by retrieval rank
    assert rerank("What happened then?", [WEATHER, CATS, TREATY], IDF, 2) == [WEATHER, CATS]  # no content word: rank order


def test_rerank_weighs_rare_words_above_common_ones() -> None:
    common = [passage(1, "The war was long."), passage(2, "The end of the war came at Utrecht."), passage(3, "A war, a war.")]
    idf = Idf.of(p["text"] for p in common)
    assert rerank("Where did the war end?", common, idf, 1)[0]["id"] == "c2"  # "end" is in one passage, "war" in all


def test_focus_cuts_a_passage_to_the_sentence_window_within_the_budget() -> None:
    sentences = ["Alpha is the first letter.", "Bravo follows it.", "Charlie was born in Lyon in 1920.", "Delta is a river mouth.",
                 "Echo answers back.", "Foxtrot is a dance."]
    long = passage(1, " ".join(sentences))
    idf = Idf.of([long["text"], WEATHER["text"]])
    (shown,) = focus("Where was Charlie born?", [long], 12, idf)
    assert shown["text"] == " ".join(sentences[1:3]) and shown["truncated"] is True  # the match and its neighbour, within 12 words
    assert words_of([shown]) <= 12 and shown["id"] == long["id"] and shown["title"] == long["title"]
    (whole,) = focus("Where was Charlie born?", [long], words_of([long]), idf)
    assert whole["text"] == long["text"] and whole["truncated"] is False  # room for it all: nothing cut


def test_focus_joins_separate_windows_with_a_gap() -> None:
    sentences = ["Zinc is a metal.", "Oslo is cold.", "Paper burns.", "Rome is old.", "Glass breaks.", "Tin melts.", "Ivy climbs."]
    long = passage(1, " ".join(sentences))
    (shown,) = focus("Is zinc or tin a metal?", [long], 6, Idf.of([long["text"]]), window=0)
    assert shown["text"] == f"Zinc is a metal.{GAP}Tin melts." and shown["truncated"] is True
