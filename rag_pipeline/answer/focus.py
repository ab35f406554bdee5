"""Which parts of the retrieved chunks a prompt shows: whole chunks re-ranked, or sentence windows, by the question's words.

A chunk is 254 embedder tokens; the sentence that answers a question is often one of ten in it,
and at k = 2 the answer reached the prompt for 61% of other-domain questions although the gold
document was in the top 5 for 82%. :func:`focus` reads more candidates (the top ``n``) and shows
the sentences that best match the question's terms, each with its neighbours, within the word
budget that whole chunks would have taken, so that more of the right text fits in the same prompt.
:func:`rerank` keeps whole chunks (the prompt shape the adapter was trained on) and only reorders
the candidates by the same scores. ``ask`` chooses between them with ``--passages``.

Scoring is lexical and cheap: a sentence scores the IDF (over the index's chunks) of the
question's content words it holds (:func:`rag_pipeline.support.content_tokens`, stemmed), plus a
small prior for its chunk's retrieval rank, so that among equal sentences the better-ranked chunk
wins. Passages keep their ids, titles and sources; a shortened one says so (``truncated``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rag_pipeline.passage import Passage
from rag_pipeline.prompt import sentence_spans
from rag_pipeline.support import content_tokens

GAP = " … "  # between two non-adjacent windows of one passage


@dataclass(frozen=True)
class Idf:
    """Inverse document frequency of content words over a collection of chunks."""

    weights: dict[str, float]
    default: float  # for a word no chunk holds

    @classmethod
    def of(cls, texts: Iterable[str]) -> Idf:
        df: Counter = Counter()
        n = 0
        for t in texts:
            n += 1
            df.update(content_tokens(t))
        return cls({w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}, math.log((n + 1) / 0.5))

    def score(self, terms: frozenset[str], text: str) -> float:
        return sum(self.weights.get(w, self.default) for w in terms & content_tokens(text))


def words_of(passages: Iterable[Passage]) -> int:
    return sum(len(p["text"].split()) for p in passages)


def rerank(question: str, passages: list[Passage], idf: Idf, k: int, rank_prior: float = 0.1) -> list[Passage]:
    """The ``k`` of ``passages`` (best-ranked first) holding the most of ``question``'s words, whole.

    A passage scores the IDF of the question's content words it holds, plus ``rank_prior`` /
    rank (its place in ``passages``), so that among equal passages the better-ranked one wins.

    Returns:
        The best ``k`` passages as given, best first.
    """
    terms = content_tokens(question)
    scored = sorted(enumerate(passages), key=lambda ip: -(idf.score(terms, ip[1]["text"]) + rank_prior / (ip[0] + 1)))
    return [p for _, p in scored[:k]]


def focus(question: str, passages: list[Passage], budget_words: int, idf: Idf, window: int = 1,
          rank_prior: float = 0.1) -> list[Passage]:
    """Sentence windows of ``passages`` (best-ranked first) that best match ``question``, within
    ``budget_words`` words in all.

    Sentences are taken best first (IDF of the question's words they hold, plus ``rank_prior`` /
    rank); each brings ``window`` neighbours on either side. A passage shows its chosen sentences
    in their own order (``GAP`` between non-adjacent runs) and is ordered by its best sentence;
    passages with none chosen are left out. A question with no content word keeps the passages'
    order and fills the budget from their beginnings.

    Returns:
        Passages as given, ``text`` cut to the chosen sentences (``truncated`` set when cut).
    """
    terms = content_tokens(question)
    scored = []  # (score, passage index, sentence index)
    spans = [sentence_spans(p["text"]) for p in passages]
    for i, (p, ss) in enumerate(zip(passages, spans)):
        for j, (s, e) in enumerate(ss):
            scored.append((idf.score(terms, p["text"][s:e]) + rank_prior / (i + 1), -i, -j))
    chosen: dict[int, set[int]] = {}
    best: dict[int, float] = {}
    used = 0
    for score, ni, nj in sorted(scored, reverse=True):
        i, j = -ni, -nj
        for k in range(max(0, j - window), min(len(spans[i]), j + window + 1)):
            if k in chosen.get(i, set()):
                continue
            s, e = spans[i][k]
            n = len(passages[i]["text"][s:e].split())
            if used + n > budget_words and used:
                continue
            chosen.setdefault(i, set()).add(k)
            best.setdefault(i, score)
            used += n
        if used >= budget_words:
            break
    out = []
    for i in sorted(chosen, key=lambda i: (-best[i], i)):
        p, ss, ks = passages[i], spans[i], sorted(chosen[i])
        runs, text = [], ""
        for k in ks:
            piece = p["text"][ss[k][0]:ss[k][1]]
            text = piece if not text else text + (" " if runs and runs[-1] == k - 1 else GAP) + piece
            runs.append(k)
        cut = len(ks) < len(ss)
        out.append({**p, "text": text, **({"truncated": True} if cut else {})})
    return out
