"""Inline contexts: QA records that carry their own passage (``{"context", "question", "answer"}``).

* No index given: ``build-raft-dataset`` indexes the distinct contexts as documents
  (:func:`rag_pipeline.data.raft.index_contexts`: the same chunking, embedder and manifest as
  ``build-index``), each under an id derived from its text (:func:`context_doc_id`), and each
  record's context becomes its gold document (:func:`attach_context_docs`).
* An existing index: :func:`match_contexts` finds each context's chunks in it (a chunk inside the
  context, the context inside a chunk, or nearly the same words); the contexts it lacks are reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from rag_pipeline.index.ingest import normalize_whitespace
from rag_pipeline.qa import QAItem
from rag_pipeline.textnorm import words

MATCH_OVERLAP = 0.9  # share of the shorter text's words the other must hold to count as the same passage


@dataclass(frozen=True)
class Context:
    """A distinct passage of a QA file: the id it is indexed under, its title and text (whitespace-normalized)."""

    doc_id: str
    title: str
    text: str


def context_doc_id(text: str) -> str:
    """A document id from the passage's text: the same passage gets the same id in every file and run."""
    return "ctx-" + hashlib.sha256(normalize_whitespace(text).encode()).hexdigest()[:12]


def distinct_contexts(items: list[QAItem]) -> list[Context]:
    """The distinct contexts of ``items`` in order of first appearance (the first record's title)."""
    seen: dict[str, Context] = {}
    for it in items:
        if it.context is not None:
            text = normalize_whitespace(it.context)
            if text and text not in seen:
                seen[text] = Context(context_doc_id(text), it.title, text)
    return list(seen.values())


def attach_context_docs(items: list[QAItem]) -> list[QAItem]:
    """Each record with a context gets that context's document as its gold document (``doc_id``)."""
    return [dataclasses.replace(it, doc_id=context_doc_id(it.context)) if it.context is not None and it.context.strip() else it
            for it in items]


def same_passage(chunk_text: str, context: str) -> bool:
    """Whether a chunk is (part of) the context: one inside the other, or nearly the same words."""
    if chunk_text in context or context in chunk_text:
        return True
    a, b = set(words(chunk_text)), set(words(context))
    return bool(a and b) and len(a & b) / min(len(a), len(b)) >= MATCH_OVERLAP


def match_contexts(retriever: Any, contexts: list[Context], k: int = 10, batch_size: int = 256) -> dict[str, list[Any]]:
    """The index's chunks of each context (by context text; an empty list: the index lacks it).

    The context itself is the query (dense and BM25); the hits that are the same passage, and the
    other chunks of their documents that lie inside the context, are its chunks, in document order.
    """
    out: dict[str, list[Any]] = {}
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start : start + batch_size]
        for ctx, hits in zip(batch, retriever.search_batch([c.text for c in batch], k, True)):
            found = {h.chunk.id: h.chunk for h in hits if same_passage(h.chunk.text, ctx.text)}
            if found:
                docs = retriever.store.chunks_of_docs({c.doc_id for c in found.values()})
                found.update({c.id: c for chunks in docs.values() for c in chunks if c.text in ctx.text})
            out[ctx.text] = sorted(found.values(), key=lambda c: (c.doc_id, c.position))
    return out


def resolve_context_docs(retriever: Any, items: list[QAItem]) -> tuple[list[QAItem], list[Context]]:
    """Items with a context and no ``doc_id`` get the index's document holding that context (when
    exactly one does), so that document-level measures see their gold document.

    Returns:
        (items, the contexts the index lacks).
    """
    contexts = distinct_contexts([it for it in items if it.doc_id is None])
    if not contexts:
        return items, []
    found = match_contexts(retriever, contexts)
    doc_of = {text: chunks[0].doc_id for text, chunks in found.items() if len({c.doc_id for c in chunks}) == 1}
    out = [dataclasses.replace(it, doc_id=doc_of.get(normalize_whitespace(it.context))) if it.context is not None and it.doc_id is None else it
           for it in items]
    return out, [c for c in contexts if not found[c.text]]
