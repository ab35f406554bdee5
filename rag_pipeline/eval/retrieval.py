"""``eval-retrieval``: Recall@k, MRR@10 and Precision@k of an index on a QA file.

At document level where ``doc_id`` is given (a hit is a retrieved chunk of the gold document;
chunks of one document count once, at their best rank); otherwise answer-string recall (a
retrieved chunk contains a gold answer). Unanswerable questions are left out of answer-string
recall (they have no answer) but kept at document level (their paragraph is known).

Every record left out is listed with its reason (``skipped`` in the result and in ``--json``):
exact repeats, questions without an answer at answer level, questions without a gold document
at document level. A QA file with no answers at all cannot be scored at answer level: refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from rag_pipeline.config import opt
from rag_pipeline.data.contexts import resolve_context_docs
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.qa import QAFieldConfig, QAItem, load_qa, require_answers, unique_questions
from rag_pipeline.textnorm import contains_answer

log = logging.getLogger(__name__)

KS = (1, 5, 10)
REASONS = {
    "duplicate": "repeated record (same id, question and answers): counted once",
    "unanswerable": "unanswerable: answer-string recall needs an answer",
    "no_answer": "answerable but no answer given: answer-string recall needs one",
    "no_doc": "no gold document: no doc_id, and its context (if any) is not in the index",
}


@dataclass
class EvalRetrievalConfig(QAFieldConfig):
    index: str = opt("indexes/disfl_qa", "index directory")
    qa: str = opt("corpus/disfl_qa/qa/test.jsonl", "QA file (JSONL, JSON, CSV/TSV, Parquet, datasets folder): question, answer, optional id, doc_id, context, answerable")
    k: int = opt(10, "chunks retrieved per question (at least 10 for Recall@10 and MRR@10)")
    precision_k: int = opt(5, "k of Precision@k")
    hybrid: bool = opt(True, "fuse BM25 with dense retrieval by reciprocal rank (the default: Recall@1 0.83 against 0.72 dense on the bundled test split); --no-hybrid for dense only")
    level: Literal["auto", "document", "answer"] = opt("auto", "document level where doc_id is given, else answer string")
    batch_size: int = opt(256, "questions embedded and searched per batch")
    json: bool = opt(False, "print the metrics as JSON")

    def __post_init__(self) -> None:
        if self.k < max(KS):
            raise ConfigError(f"k must be at least {max(KS)} for Recall@10 and MRR@10, got {self.k}")
        if not 1 <= self.precision_k <= self.k:
            raise ConfigError(f"precision_k must be between 1 and k={self.k}, got {self.precision_k}")


def relevance(item: QAItem, hits: list, level: str) -> list[bool]:
    """Relevance of each ranked unit: documents (first chunk of each) or chunks (answer string)."""
    if level == "document":
        seen, rel = set(), []
        for h in hits:
            if h.chunk.doc_id not in seen:
                seen.add(h.chunk.doc_id)
                rel.append(h.chunk.doc_id == item.doc_id)
        return rel
    return [contains_answer(h.chunk.text, item.answers) for h in hits]


def retrieval_metrics(relevances: list[list[bool]], precision_k: int) -> dict[str, float]:
    """Recall@1/5/10, MRR@10 and Precision@k averaged over questions."""
    n = len(relevances)
    if n == 0:
        raise InputError("no questions to evaluate at this level: check the QA file's doc_id/answer fields")
    out = {f"recall@{k}": sum(any(r[:k]) for r in relevances) / n for k in KS}
    out["mrr@10"] = sum(next((1.0 / (i + 1) for i, x in enumerate(r[:10]) if x), 0.0) for r in relevances) / n
    out[f"precision@{precision_k}"] = sum(sum(r[:precision_k]) / precision_k for r in relevances) / n
    return out


def _skip(item: QAItem, why: str) -> dict:
    return {"id": item.id, "question": item.question, "answer": list(item.answers), "reason": REASONS[why], "where": item.where}


def scored_items(items: list[QAItem], level: str) -> tuple[list[QAItem], list[dict]]:
    """The items a level can score, and a record (id, question, answer, reason, where) for each left out."""
    def why(i: QAItem) -> str | None:
        if level == "document":
            return None if i.doc_id else "no_doc"
        return None if i.answerable and i.answers else ("no_answer" if i.answerable else "unanswerable")

    reasons = [why(i) for i in items]
    return [i for i, r in zip(items, reasons) if r is None], [_skip(i, r) for i, r in zip(items, reasons) if r is not None]


def run(cfg: EvalRetrievalConfig, retriever=None) -> dict:
    """Evaluate retrieval; returns metrics plus ``level``, ``questions`` and ``skipped`` (the
    records left out, each with its reason).

    Raises:
        InputError: a blank question or an id used for two different questions in the QA file; at
            answer level, a QA file with answerable questions and no answer (no answer column).
    """
    loaded = load_qa(cfg.qa, cfg.qa_fields())
    items = unique_questions(loaded)
    kept = {id(i) for i in items}
    skipped = [_skip(i, "duplicate") for i in loaded if id(i) not in kept]
    if cfg.level == "answer" or (cfg.level == "auto" and any(not i.doc_id and i.context is None for i in items)):
        require_answers(cfg.qa, items, cfg.qa_fields(), "scored by answer-string recall")  # before loading the index
    retriever = retriever or Retriever.load(cfg.index)
    items, missing = resolve_context_docs(retriever, items)  # a record's own passage is its gold document
    if missing:
        log.warning("%d of the QA file's contexts are not in index %s: their questions have no gold document", len(missing), cfg.index)
    level = cfg.level
    if level == "auto":
        level = "document" if all(i.doc_id for i in items) else "answer"
    if level == "answer":
        require_answers(cfg.qa, items, cfg.qa_fields(), "scored by answer-string recall")
    items, left_out = scored_items(items, level)
    skipped += left_out
    if skipped:
        log.warning("%d of %d records left out (%s)", len(skipped), len(loaded), "; ".join(sorted({s["reason"] for s in skipped})))
    rels = []
    for start in range(0, len(items), cfg.batch_size):
        batch = items[start : start + cfg.batch_size]
        # Over-fetch at document level: several chunks of one document count once.
        k = cfg.k * 3 if level == "document" else cfg.k
        for item, hits in zip(batch, retriever.search_batch([i.question for i in batch], k, cfg.hybrid)):
            rels.append(relevance(item, hits, level)[: cfg.k])
    return {"level": level, "questions": len(rels), **retrieval_metrics(rels, cfg.precision_k), "skipped": skipped}


def main(cfg: EvalRetrievalConfig) -> int:
    """``rag-pipeline eval-retrieval``: print the metrics as a table, or as JSON with ``--json``."""
    import json

    m = run(cfg)
    if cfg.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['questions']} questions, {m['level']} level")
    for k, v in m.items():
        if k not in ("level", "questions", "skipped"):
            print(f"  {k:<14}{v:.4f}")
    if m["skipped"]:
        print(skipped_line(m["skipped"]))
    return 0


def skipped_line(skipped: list[dict], shown: int = 5) -> str:
    """``left out N records: REASON: id, id, ...; ...`` (the first ``shown`` ids per reason; --json lists them all)."""
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s["reason"], []).append(s["id"])
    parts = [f"{len(ids)} {reason} ({', '.join(ids[:shown])}{', ...' if len(ids) > shown else ''})" for reason, ids in by_reason.items()]
    return f"left out {len(skipped)} records: " + "; ".join(parts)
