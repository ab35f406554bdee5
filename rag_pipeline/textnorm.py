"""SQuAD-style answer normalization, shared by retrieval evaluation, the RAFT builder and metrics."""

from __future__ import annotations

import functools
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD's evaluation script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


_WORD = re.compile(r"\w+", re.UNICODE)
_ARTICLE_WORDS = frozenset(("a", "an", "the"))


def words(text: str) -> list[str]:
    """Lower-cased word tokens without articles; punctuation separates words ("Kissinger's" -> kissinger, s)."""
    return [w for w in _WORD.findall(text.lower()) if w not in _ARTICLE_WORDS]


@functools.lru_cache(maxsize=1 << 16)
def _padded_words(text: str) -> str:
    # Cached: the same chunk is checked against many questions' answers.
    return f" {' '.join(words(text))} "


def contains_answer(text: str, answers: list[str]) -> bool:
    """True when an answer's words occur contiguously, as whole words, in the text.

    Unlike :func:`normalize_answer` (SQuAD's, which glues "Kissinger's" into "kissingers"),
    punctuation splits words here, so an answer next to an apostrophe, dash or degree sign
    still counts as contained.
    """
    hay = _padded_words(text)
    return any(needle.strip() and needle in hay for needle in (f" {' '.join(words(a))} " for a in answers))
