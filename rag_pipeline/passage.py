"""The chunk types, and the passage: what every stage hands on when it shows a question some text.

One chunk of a document goes through four types, all here:

* :class:`Chunk`: a piece of a document sized for the embedder, as ingestion cuts it
  (:func:`rag_pipeline.index.ingest.chunk_document`);
* :class:`StoredChunk`: the same chunk read back from an index, with its ``row`` (its FAISS id);
* :class:`Hit`: a stored chunk a search found, with its ``score`` and ``rank``;
* :class:`Passage`: a plain dict (so it is its own JSON): the retriever makes them from hits
  (:func:`from_chunk`), ``ask`` shows and returns them, ``build-raft-dataset`` stores their
  :data:`DOCUMENT_KEYS` in each row, ``evaluate`` builds its oracle and injected contexts from them,
  and :mod:`rag_pipeline.prompt` renders their ``title`` and ``text``.

The choice of a question's passages is here too, because RAFT training data and evaluation's
oracle context must agree on it: :func:`gold_passage` (the chunk the answer comes from) and
:func:`hard_distractors` (best-ranked chunks that must not help). Both take ``free_form``: for a
QA set whose answers are not spans of their passages (:func:`rag_pipeline.support.answer_form`),
support is judged by content-token recall as well as by whole-word containment
(:mod:`rag_pipeline.support`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from rag_pipeline.errors import InputError
from rag_pipeline.qa import QAItem
from rag_pipeline.support import support, supports
from rag_pipeline.textnorm import contains_answer


@dataclass(frozen=True)
class Chunk:
    """A piece of a document sized for the embedder; ``id`` derives from its text (and document)."""

    id: str
    doc_id: str
    title: str
    source: str
    position: int  # 0-based index of the chunk within its document
    text: str


@dataclass(frozen=True)
class StoredChunk:
    """A :class:`Chunk` as an index stores it: ``row`` is its row in the store and its id in the FAISS index."""

    row: int
    id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its score (cosine similarity, or fused RRF score with --hybrid)."""

    chunk: StoredChunk
    score: float
    rank: int  # 1-based

    def to_dict(self) -> Passage:
        return from_chunk(self.chunk, self.score, self.rank)


class _PassageRequired(TypedDict):
    id: str
    title: str
    text: str


class Passage(_PassageRequired, total=False):
    """A passage shown to the generator. ``id``, ``title`` and ``text`` are always there (a RAFT
    dataset row keeps only those, :data:`DOCUMENT_KEYS`); the rest when known: the chunk's
    provenance (``doc_id``, ``source``, ``position``: every passage made from a chunk or a given
    document has them), retrieval's ``rank`` and ``score`` (cosine, or fused RRF score; None for
    given documents), and ``ask``'s ``truncated`` (cut to fit the prompt budget)."""

    rank: int
    score: float | None
    doc_id: str
    source: str
    position: int
    truncated: bool


# What a RAFT dataset row keeps of each document (its on-disk schema; see raft.features).
DOCUMENT_KEYS = ("id", "title", "text")


def from_chunk(chunk: StoredChunk, score: float | None = None, rank: int | None = None) -> Passage:
    """A chunk as a passage; with ``rank``, ``rank`` and ``score`` (rounded to 6 places) come first."""
    head: dict[str, Any] = {} if rank is None else {"rank": rank, "score": None if score is None else round(score, 6)}
    return {**head, "id": chunk.id, "doc_id": chunk.doc_id, "title": chunk.title, "source": chunk.source,
            "position": chunk.position, "text": chunk.text}


def document(p: Passage) -> Passage:
    """The part of a passage a RAFT dataset row stores (:data:`DOCUMENT_KEYS`)."""
    return {k: p[k] for k in DOCUMENT_KEYS}  # type: ignore[literal-required]


def from_given(d: Any, rank: int) -> Passage:
    """A caller-given context document (``{text, id?, doc_id?, title?, source?, position?, score?}``)
    as a full passage, in the key order of a retrieved one.

    Raises:
        InputError: ``d`` is not a dict with a ``text`` string.
    """
    if not isinstance(d, dict) or not isinstance(d.get("text"), str):
        raise InputError(f"context document {rank} must be a dict with a 'text' string, got {d!r:.80}")
    score = d.get("score")
    return {"rank": rank, "score": None if score is None else float(score), "id": str(d.get("id", f"ctx-{rank}")),
            "doc_id": str(d.get("doc_id", d.get("id", ""))), "title": d.get("title") or "", "source": d.get("source", ""),
            "position": d.get("position", 0), "text": d["text"], "truncated": False}


# ---------------------------------------------------------------------------------------------
# Which passages a question is shown (RAFT training data and evaluation's oracle context)
# ---------------------------------------------------------------------------------------------


def gold_passage(item: QAItem, hits: list[Hit], chunks_of_doc: list[StoredChunk] | None,
                 order: Literal["rank", "position"], fallback_to_first: bool, *, free_form: bool = False,
                 min_support: float = 0.5, given: bool = False) -> StoredChunk | None:
    """The chunk a question's answer comes from, or None.

    The rule both callers share: an unanswerable question's gold passage is its document's first
    chunk; an answerable one's is a chunk holding an answer, of its document when ``item.doc_id``
    is known (None when that document has no chunk), else among the hits, best-ranked first.
    With ``free_form``, when no chunk holds an answer verbatim, the chunk that best supports it:
    the highest recall of its content tokens (:func:`rag_pipeline.support.support`), ties in
    ``order``; it must reach ``min_support`` unless ``given``.
    The two callers differ in two choices, for the reasons given:

    Args:
        item: the question (:class:`rag_pipeline.qa.QAItem`).
        hits: its retrieved chunks, best first.
        chunks_of_doc: the chunks of its gold passage by position: of ``item.doc_id``, or those of
            its own context (None or [] without one).
        order: where several chunks of the document hold an answer: ``rank`` takes the
            best-ranked hit, then the others by position (build-raft-dataset: the oracle is the
            passage retrieval finds, as at ``ask`` time); ``position`` takes the first by position
            (evaluate: a gold passage that does not depend on the retriever being evaluated).
        fallback_to_first: when no chunk holds an answer, return the document's first chunk
            (evaluate: still ask the question with its own paragraph) instead of None
            (build-raft-dataset: such a question is label noise, skipped or given no oracle).
        free_form: the QA set's answers are free-form text, not spans (see above).
        min_support: free-form: the recall a chunk needs to be the gold passage.
        given: free-form: ``chunks_of_doc`` are the record's own context, its gold passage as
            given (the best of them is taken whatever its recall).
    """
    if item.doc_id is not None and not chunks_of_doc:
        return None
    first = chunks_of_doc[0] if chunks_of_doc else None
    if not item.answerable:
        return first
    gold_ids = {c.id for c in chunks_of_doc} if chunks_of_doc else None
    ranked = [h.chunk for h in hits if gold_ids is None or h.chunk.id in gold_ids]
    by_position = list(chunks_of_doc or [])
    candidates = ranked + by_position if order == "rank" else (by_position or ranked)
    found = next((c for c in candidates if contains_answer(c.text, item.answers)), None)
    if found is None and free_form:
        found = best_supported(item.answers, hits, candidates, order, min_support, given)
    return first if found is None and fallback_to_first else found


def best_supported(answers: list[str], hits: list[Hit], candidates: list[StoredChunk], order: Literal["rank", "position"],
                   min_support: float, given: bool) -> StoredChunk | None:
    """The candidate with the highest recall of an answer's content tokens, ties to the better
    retrieval rank (``order="rank"``) or the earlier position; None under ``min_support`` unless ``given``."""
    rank = {h.chunk.id: h.rank for h in hits}
    unique = list({c.id: c for c in candidates}.values())
    tie = (lambda c: -rank.get(c.id, math.inf)) if order == "rank" else (lambda c: 0)
    best = max(unique, key=lambda c: (support(c.text, answers), tie(c)), default=None)  # max keeps the first of equals
    if best is not None and (given or support(best.text, answers) >= min_support):
        return best
    return None


def hard_distractors(hits: Iterable[Hit], n: int, gold_doc: str | None, gold: StoredChunk | None,
                     answers: list[str], taken: list[StoredChunk] | None = None, *, free_form: bool = False,
                     min_support: float = 0.5) -> list[StoredChunk]:
    """Up to ``n`` best-ranked hits usable as distractors, appended to ``taken`` (returned).

    Usable (:func:`usable_distractor`): not the gold passage, not of the gold document, supporting
    no answer, and no repeat of one already taken.
    """
    taken = [] if taken is None else taken
    for h in hits:
        if len(taken) >= n:
            break
        if usable_distractor(h.chunk, gold_doc, gold, answers, taken, free_form=free_form, min_support=min_support):
            taken.append(h.chunk)
    return taken


def usable_distractor(c: StoredChunk, gold_doc: str | None, gold: StoredChunk | None, answers: list[str], taken: list[StoredChunk],
                      *, free_form: bool = False, min_support: float = 0.5) -> bool:
    """Whether ``c`` may be shown as a distractor beside ``gold`` and the distractors ``taken``.

    It may not support an answer: hold it as whole words, or, for free-form answers, hold
    ``min_support`` of a long answer's content tokens (:func:`rag_pipeline.support.supports`).
    """
    seen = [*taken, *([gold] if gold is not None else [])]
    return all(c.id != s.id and c.text != s.text for s in seen) and c.doc_id != gold_doc and not holds_answer(
        c.text, answers, free_form=free_form, min_support=min_support)


def holds_answer(text: str, answers: list[str], *, free_form: bool = False, min_support: float = 0.5) -> bool:
    """Whether a passage would answer the question, so that it may not be shown as a distractor: it holds an answer as
    whole words, or, for free-form answers, ``min_support`` of a long answer's content tokens."""
    return supports(text, answers, min_support) if free_form else contains_answer(text, answers)
