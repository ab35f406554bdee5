"""Whether a passage supports an answer, for answers that are spans and for answers that are not.

A span answer ("Kuala Lumpur") is supported by a passage that holds it verbatim, as whole words
(:func:`rag_pipeline.textnorm.contains_answer`). A free-form answer ("Kuala Lumpur is the capital
city of Malaysia.") rarely occurs verbatim; it is supported in proportion to the recall of its
content tokens in the passage: lower-cased words, stopwords and single letters out, a light
suffix stem so that "cities" meets "city" (:func:`content_tokens`).

Used by :mod:`rag_pipeline.passage` (which chunk is a question's gold passage, which chunks may be
distractors), :func:`rag_pipeline.prompt.support_span` (which sentences a ``cot`` target quotes
and the budget fitter keeps), ``evaluate`` (whether a test set's answers are spans) and
:mod:`rag_pipeline.data.questions`.
"""

from __future__ import annotations

import functools

from rag_pipeline.textnorm import contains_answer, words

# Function words that say nothing about whether a passage supports an answer.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself him himself
his how i if in into is it its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves then there these they this
those through to too under until up very was we were what when where which while who whom why will with would you your
yours yourself yourselves yes s t d ll m re ve
""".split())

# An answer with at most this many content tokens is short: support means holding it verbatim.
SHORT_ANSWER_TOKENS = 4


def _stem(word: str) -> str:
    """A light suffix stem (plural and past forms), enough for paraphrases to meet: not a real stemmer."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    if len(word) > 5 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    return word


@functools.lru_cache(maxsize=1 << 16)
def content_tokens(text: str) -> frozenset[str]:
    """The stemmed content words of ``text``: lower-cased, stopwords and single letters out.

    Cached: a chunk is compared with many answers.
    """
    return frozenset(_stem(w) for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit()))


def word_share(question: str, texts: list[str]) -> float:
    """The share of ``question``'s content words that appear in ``texts``; 0.0 for a question without any ("???",
    "Is it?"): nothing in it is found, so the retrieval threshold's cosine alone decides (at 1.0 it never abstained,
    even on an empty index)."""
    need = content_tokens(question)
    if not need:
        return 0.0
    have = frozenset().union(*(content_tokens(t) for t in texts)) if texts else frozenset()
    return len(need & have) / len(need)


def is_short(answer: str) -> bool:
    """Whether an answer is short enough that only a verbatim occurrence supports it."""
    return len(content_tokens(answer)) <= SHORT_ANSWER_TOKENS


def recall(answer: str, text: str) -> float:
    """Share of the answer's content tokens found in ``text``, 1.0 when it holds the answer verbatim.

    An answer without content tokens ("It is.") has recall 1.0 only when held verbatim.
    """
    if contains_answer(text, [answer]):
        return 1.0
    need = content_tokens(answer)
    if not need:
        return 0.0
    return len(need & content_tokens(text)) / len(need)


def support(text: str, answers: list[str]) -> float:
    """The best :func:`recall` of any of the answers in ``text`` (0.0 without answers)."""
    return max((recall(a, text) for a in answers if a.strip()), default=0.0)


def supports(text: str, answers: list[str], threshold: float) -> bool:
    """Whether ``text`` supports an answer: holds a short one verbatim (whole words), or holds at
    least ``threshold`` of a long one's content tokens (or the long one verbatim)."""
    for a in answers:
        if not a.strip():
            continue
        if contains_answer(text, [a]) or (not is_short(a) and recall(a, text) >= threshold):
            return True
    return False


def context_support(text: str, answers: list[str], question: str) -> tuple[float, float]:
    """How well a chunk of a record's own context backs its answer: (:func:`support` of the
    answers, recall of the question's content tokens).

    Compared as a tuple: the answer's words first; the question's words decide between chunks
    the answer cannot tell apart ("Yes", "no", "He is" have no content tokens, and a paraphrase
    may share none with the context), so the chunk the question is about wins.
    """
    return support(text, answers), recall(question, text)


# A QA set is span data when at least this share of its answers occur verbatim in their gold passage.
SPAN_SHARE = 0.8


def answer_form(cases: list[tuple[list[str], list[str]]]) -> tuple[str, float | None]:
    """Whether a QA set's answers are spans of their passages or free-form text.

    Args:
        cases: (answers, texts of the gold passage's chunks) of each answerable question whose gold
            passage is known.

    Returns:
        (``"span"`` or ``"free-form"``, the share of cases holding an answer verbatim; None without
        cases, which counts as span data). Span data keeps the verbatim rules: an oracle or a
        distractor is judged by whole-word containment alone, and exact match is reported.
    """
    if not cases:
        return "span", None
    share = sum(any(contains_answer(t, answers) for t in texts) for answers, texts in cases) / len(cases)
    return ("span" if share >= SPAN_SHARE else "free-form"), round(share, 4)
