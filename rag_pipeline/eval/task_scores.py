"""``evaluate --task summary|extract``: per-answer scores and their aggregates (pure functions).

The reference of a question is written from its gold passage by the rules that write training
targets (:mod:`rag_pipeline.data.tasks`), so no human reference is needed:

- summary: ROUGE-L of the summary (citations removed) against the reference summary; whether it
  holds the gold answer; citation recall (share of sentences their cited passages support) and
  precision (share of citations that are needed), in ALCE's sense with the support judge
  (:func:`rag_pipeline.answer.summary.citation_quality`); abstention on unanswerable questions.
- extract: JSON validity under the schema; the ``answer`` field's exact match and F1 against the
  gold answers; the ``quote`` field's F1 against the reference quote; null accuracy (both fields
  null) on unanswerable questions, and false nulls on answerable ones.
"""

from __future__ import annotations

import json
from typing import Any

from rag_pipeline.data import tasks
from rag_pipeline.metrics import exact_match, f1, mean_of, rouge_l
from rag_pipeline.textnorm import contains_answer

# (column header, key of aggregate(), shown as a percentage) per task, for the report
COLUMNS = {
    "summary": [("ROUGE-L", "rougeL"), ("holds answer", "answer_coverage"), ("cite recall", "citation_recall"),
                ("cite prec.", "citation_precision"), ("abstain (unans.)", "abstain_rate"), ("false abstain", "false_abstain_rate")],
    "extract": [("valid JSON", "valid_rate"), ("answer EM", "answer_em"), ("answer F1", "answer_f1"), ("quote F1", "quote_f1"),
                ("null acc. (unans.)", "null_accuracy"), ("false null", "false_null_rate"), ("closed at limit", "cut_rate")],
}


def reference(task: str, question: str, gold_text: str | None, answers: list[str], answerable: bool) -> str | None:
    """The reference a prediction is scored against: a summary's sentences joined, or the JSON target; None without a gold passage."""
    if not answerable or not answers or gold_text is None:
        return tasks.extract_target(None, []) if task == "extract" else None
    if task == "summary":
        said = tasks.summary_sentences(question, gold_text, answers)
        return " ".join(f"{s}." for s in said) if said else None
    return tasks.extract_target(gold_text, answers)


def score_summary(sentences: list[dict[str, Any]] | None, abstained: bool, answers: list[str], answerable: bool,
                  ref: str | None) -> dict[str, Any]:
    """One summary's scores; ``sentences`` as :func:`~rag_pipeline.answer.summary.citation_quality` checks them."""
    said = [] if abstained else list(sentences or [])
    text = " ".join(s["text"] for s in said)
    return {
        "rougeL": (rouge_l(text, [ref]) if said else 0.0) if ref else None,
        "answer_coverage": (bool(said) and contains_answer(text, answers)) if answerable and answers else None,
        "sentences": len(said), "supported": sum(bool(s["supported"]) for s in said),
        "citations": sum(len(s["precise"]) for s in said), "precise": sum(sum(map(bool, s["precise"])) for s in said),
    }


def score_extract(data: Any, json_error: str | None, answers: list[str], answerable: bool, ref: str | None,
                  cut: bool = False) -> dict[str, Any]:
    """One JSON answer's scores (``data``: the parsed object, None when ``json_error`` says why not; ``cut``: the decoder
    closed it early at the token limit)."""
    valid = json_error is None and isinstance(data, dict)
    obj = data if valid else {}
    value, quote = obj.get("answer"), obj.get("quote")
    is_null = valid and value is None and quote is None
    want = json.loads(ref) if ref else {"answer": None, "quote": None}
    has = answerable and bool(answers)
    return {
        "valid": valid,
        "answer_em": (exact_match(str(value), answers) if value is not None else 0.0) if has else None,
        "answer_f1": (f1(str(value), answers) if value is not None else 0.0) if has else None,
        "quote_f1": (f1(str(quote), [want["quote"]]) if quote is not None else 0.0) if has and want.get("quote") else None,
        "null": is_null,
        "cut": cut,
    }


def _share(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def aggregate(task: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The task's figures over prediction records (each with ``answerable``, ``abstained`` and ``scores["task"]``)."""
    ans = [r for r in records if r["answerable"]]
    unans = [r for r in records if not r["answerable"]]
    s = [r["scores"]["task"] for r in records]
    if task == "summary":
        n_sent, n_cite = sum(x["sentences"] for x in s), sum(x["citations"] for x in s)
        return {"rougeL": mean_of([r["scores"]["task"]["rougeL"] for r in ans]),
                "answer_coverage": mean_of([r["scores"]["task"]["answer_coverage"] for r in ans]),
                "citation_recall": _share(sum(x["supported"] for x in s), n_sent),
                "citation_precision": _share(sum(x["precise"] for x in s), n_cite),
                "sentences_per_summary": mean_of([x["sentences"] for x, r in zip(s, records) if not r["abstained"]]),
                "abstain_rate": mean_of([r["abstained"] for r in unans]), "false_abstain_rate": mean_of([r["abstained"] for r in ans])}
    return {"valid_rate": mean_of([x["valid"] for x in s]),
            "answer_em": mean_of([r["scores"]["task"]["answer_em"] for r in ans]),
            "answer_f1": mean_of([r["scores"]["task"]["answer_f1"] for r in ans]),
            "quote_f1": mean_of([r["scores"]["task"]["quote_f1"] for r in ans]),
            "null_accuracy": mean_of([r["scores"]["task"]["null"] for r in unans]),
            "false_null_rate": mean_of([r["scores"]["task"]["null"] for r in ans]),
            "cut_rate": mean_of([x.get("cut", False) for x in s])}
