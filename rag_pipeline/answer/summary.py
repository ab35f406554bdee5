"""Summaries with attribution: ``ask --task summary`` writes one to four sentences, each citing its passages.

The request becomes a summary instruction (:func:`instruction`), and decoding runs under a grammar
(:func:`constraint`, llguidance, as JSON answers do) that allows exactly: one to
:data:`MAX_SENTENCES` sentences, each ending with one or two citations ``[n]`` of the shown
passages and a full stop (``The Normans came from Normandy [1].``), or the abstention sentence.
A sentence without a citation, a citation of a passage that was not shown, or text after the last
sentence cannot be decoded.

Each sentence is then checked against the passages it cites (:func:`citation_quality`), in
ALCE's sense (Gao et al. 2023) with the :mod:`~rag_pipeline.support` measure as the judge, which
runs on any CPU: a sentence is *supported* when its cited passages together hold at least
:data:`~rag_pipeline.answer.check.ANSWER_SUPPORT` of its content words (citation recall); a
citation is *precise* unless the sentence is unsupported, or the citation alone does not support
it while the others do without it (citation precision).
"""

from __future__ import annotations

import re
from typing import Any

from rag_pipeline.answer.check import ANSWER_SUPPORT
from rag_pipeline.answer.structured import GrammarConstraint, lark_grammar
from rag_pipeline.prompt import ABSTAIN
from rag_pipeline.support import recall

MAX_SENTENCES = 4
MAX_SENTENCE_CHARS = 300

_SENTENCE = re.compile(r"\s*(.+?)\s*((?:\[\d+\]\s*)+)\.")
_NUMBER = re.compile(r"\[(\d+)\]")


def instruction(question: str) -> str:
    """The request as the prompt's question: a summary of what the documents say about it, each sentence cited."""
    return (f"Summarize what the documents say about: {question.strip()}\n\nWrite one to {MAX_SENTENCES} sentences. "
            "End each sentence with the number of the document it comes from, as [n], before its full stop.")


def grammar(n_docs: int) -> str:
    """The Lark grammar of a summary of ``n_docs`` shown passages (or the abstention)."""
    numbers = "|".join(str(n) for n in range(1, max(n_docs, 1) + 1))
    abstain = ABSTAIN.replace("\\", "\\\\").replace('"', '\\"')
    # TEXT ends with the space before the first citation: the lexer then needs no look-ahead.
    return f'''
start: summary | "{abstain}"
summary: sentence (" " sentence){{0,{MAX_SENTENCES - 1}}}
sentence: TEXT cite (" " cite)? "."
cite: "[" NUMBER "]"
NUMBER: /({numbers})/
TEXT: /[A-Z0-9"'][^\\[\\]\\n.!?]{{2,{MAX_SENTENCE_CHARS}}} /
'''


def constraint(tokenizer: Any, n_docs: int) -> Any:
    """The token constraint of a summary of ``n_docs`` passages (``allowed(generated) -> ids``)."""
    return GrammarConstraint(tokenizer, lark_grammar(grammar(n_docs)))


def sentences_of(text: str) -> list[tuple[str, list[int]]]:
    """(sentence without its citations, the passage numbers it cites) for each cited sentence of ``text``."""
    out = []
    for m in _SENTENCE.finditer(text):
        numbers = list(dict.fromkeys(int(n) for n in _NUMBER.findall(m.group(2))))
        out.append((m.group(1).strip(), numbers))
    return out


def complete_part(text: str) -> str:
    """``text`` up to the end of its last complete cited sentence ("" when none ended): what the token limit left whole."""
    end = 0
    for m in _SENTENCE.finditer(text):
        end = m.end()
    return text[:end].strip()


def _supported(sentence: str, passages: list[str]) -> bool:
    return bool(passages) and recall(sentence, "\n".join(passages)) >= ANSWER_SUPPORT


def citation_quality(sentences: list[tuple[str, list[int]]], passages: list[str]) -> list[dict[str, Any]]:
    """Per sentence: ``text``, ``cited`` (numbers), ``supported`` (its cited passages hold it) and
    ``precise`` (per citation, in order); numbers outside ``passages`` cite nothing and are imprecise."""
    out = []
    for text, cited in sentences:
        shown = {n: passages[n - 1] for n in cited if 1 <= n <= len(passages)}
        supported = _supported(text, list(shown.values()))
        precise = []
        for n in cited:
            if n not in shown or not supported:
                precise.append(False)
                continue
            alone = _supported(text, [shown[n]])
            others = [p for m, p in shown.items() if m != n]
            precise.append(alone or not _supported(text, others))
        out.append({"text": text, "cited": cited, "supported": supported, "precise": precise})
    return out


def citation_scores(checked: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(citation recall: share of sentences supported, citation precision: share of citations precise); None without any."""
    cites = [p for s in checked for p in s["precise"]]
    return (sum(s["supported"] for s in checked) / len(checked) if checked else None,
            sum(cites) / len(cites) if cites else None)
