"""evaluate --task summary|extract: per-answer scores and aggregates against hand-computed cases."""

from __future__ import annotations

import json

import pytest

from rag_pipeline.data import tasks
from rag_pipeline.eval import task_scores as S

GOLD = "Rollo led the Norse raiders. He swore fealty to King Charles III in 911. The treaty gave him Normandy."


def _sentence(text: str, cited: list[int], supported: bool, precise: list[bool]) -> dict:
    return {"text": text, "cited": cited, "supported": supported, "precise": precise}


def test_references_are_written_from_the_gold_passage() -> None:
    # the answer's sentence, then the one about the question ("fealty", "Charles")
    assert S.reference("summary", "Who swore fealty to Charles?", GOLD, ["Rollo"], True) == (
        "Rollo led the Norse raiders. He swore fealty to King Charles III in 911.")
    # nothing else shares a word with the question: the sentence after the answer's
    assert S.reference("summary", "Who led them?", GOLD, ["Rollo"], True) == "Rollo led the Norse raiders. He swore fealty to King Charles III in 911."
    assert S.reference("summary", "Who got Normandy?", GOLD, ["Charles"], True) == (
        "He swore fealty to King Charles III in 911. The treaty gave him Normandy.")
    assert S.reference("summary", "Where?", "They went to St. Louis. It rained.", ["St. Louis"], True) is None  # no summary the grammar holds
    assert json.loads(S.reference("extract", "Who led?", GOLD, ["rollo"], True)) == {"answer": "Rollo", "quote": "Rollo led the Norse raiders."}
    assert S.reference("extract", "Who?", GOLD, [], False) == tasks.extract_target(None, [])
    assert S.reference("summary", "Who?", None, ["Rollo"], True) is None


def test_summary_scores() -> None:
    said = [_sentence("Rollo led the Norse raiders", [1], True, [True]), _sentence("He ruled Paris", [1, 2], False, [False, False])]
    s = S.score_summary(said, False, ["Rollo"], True, "Rollo led the Norse raiders.")
    # ROUGE-L: LCS 5 words; precision 5/8, recall 5/5 -> F = 2PR/(P+R) = 10/13
    assert s["rougeL"] == pytest.approx(10 / 13) and s["answer_coverage"] is True
    assert (s["sentences"], s["supported"], s["citations"], s["precise"]) == (2, 1, 3, 1)
    none = S.score_summary(None, True, ["Rollo"], True, "Rollo led the Norse raiders.")
    assert none["rougeL"] == 0.0 and none["answer_coverage"] is False and none["sentences"] == 0
    unans = S.score_summary(None, True, [], False, None)
    assert unans["rougeL"] is None and unans["answer_coverage"] is None


def test_extract_scores() -> None:
    ref = tasks.extract_target(GOLD, ["Rollo"])
    good = S.score_extract({"answer": "Rollo", "quote": "Rollo led the Norse raiders."}, None, ["Rollo"], True, ref)
    assert good == {"valid": True, "answer_em": 1.0, "answer_f1": 1.0, "quote_f1": 1.0, "null": False, "cut": False}
    half = S.score_extract({"answer": "King Rollo", "quote": None}, None, ["Rollo"], True, ref)
    assert half["answer_em"] == 0.0 and half["answer_f1"] == pytest.approx(2 / 3) and half["quote_f1"] == 0.0
    cut = S.score_extract(None, "not JSON (Unterminated string at character 9)", ["Rollo"], True, ref)
    assert cut == {"valid": False, "answer_em": 0.0, "answer_f1": 0.0, "quote_f1": 0.0, "null": False, "cut": False}
    closed = S.score_extract({"answer": "Rol", "quote": None}, None, ["Rollo"], True, ref, cut=True)  # closed early by the decoder
    assert closed["valid"] and closed["cut"] and closed["answer_em"] == 0.0
    null = S.score_extract({"answer": None, "quote": None}, None, [], False, S.reference("extract", "q", None, [], False))
    assert null["null"] is True and null["answer_em"] is None and null["quote_f1"] is None


def test_aggregates_pool_sentences_and_citations() -> None:
    def rec(answerable: bool, abstained: bool, task: dict) -> dict:
        return {"answerable": answerable, "abstained": abstained, "scores": {"task": task}}

    summaries = [rec(True, False, {"rougeL": 0.5, "answer_coverage": True, "sentences": 2, "supported": 1, "citations": 3, "precise": 1}),
                 rec(True, True, {"rougeL": 0.0, "answer_coverage": False, "sentences": 0, "supported": 0, "citations": 0, "precise": 0}),
                 rec(False, True, {"rougeL": None, "answer_coverage": None, "sentences": 0, "supported": 0, "citations": 0, "precise": 0}),
                 rec(False, False, {"rougeL": None, "answer_coverage": None, "sentences": 2, "supported": 2, "citations": 2, "precise": 2})]
    assert S.aggregate("summary", summaries) == {
        "rougeL": 0.25, "answer_coverage": 0.5, "citation_recall": 0.75, "citation_precision": 0.6, "sentences_per_summary": 2.0,
        "abstain_rate": 0.5, "false_abstain_rate": 0.5}
    jsons = [rec(True, False, {"valid": True, "answer_em": 1.0, "answer_f1": 1.0, "quote_f1": 0.5, "null": False}),
             rec(True, False, {"valid": True, "answer_em": 0.0, "answer_f1": 0.0, "quote_f1": 0.0, "null": True}),
             rec(False, False, {"valid": True, "answer_em": None, "answer_f1": None, "quote_f1": None, "null": True, "cut": True}),
             rec(False, False, {"valid": False, "answer_em": None, "answer_f1": None, "quote_f1": None, "null": False})]
    assert S.aggregate("extract", jsons) == {"valid_rate": 0.75, "answer_em": 0.5, "answer_f1": 0.5, "quote_f1": 0.25,
                                             "null_accuracy": 0.5, "false_null_rate": 0.5, "cut_rate": 0.25}
