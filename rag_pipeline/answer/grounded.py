"""Grounded decoding: answers that can only copy a span of a shown document, then cite it.

``ask --grounded`` and ``evaluate --grounded`` decode under :class:`GroundedConstraint`, a
token automaton that allows exactly two kinds of answer:

* ``SPAN [n]``: a contiguous span of document ``n``'s text (starting at a word, ending at a word
  boundary; any tokenization of those bytes, with or without a leading space on the first token)
  that the answer check would show (:func:`rag_pipeline.answer.check.answer_problem`: it holds a
  content word, so "The [1]" cannot be decoded), then the citation `` [n]`` of that same
  document, then the end-of-sequence token;
* the abstention sentence (:data:`rag_pipeline.prompt.ABSTAIN`), then end-of-sequence.

Every answer word can then be traced to the cited passage (0% unsupported answers by
construction). The automaton works on bytes: token strings are mapped back to bytes (byte-level
BPE, or SentencePiece's ``▁``), documents to UTF-8, and a byte trie over the vocabulary lists the
tokens that continue a document at a position. Its state is a set of hypotheses, replayed from the
generated ids at each step, so it needs no per-step bookkeeping inside ``generate``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from rag_pipeline.answer.check import answer_problem
from rag_pipeline.prompt import ABSTAIN

# Hypothesis kinds: ("span", n, start, end) copying document n's bytes start..end; ("cite", n, i) having
# emitted i tokens of document n's citation; ("abstain", i) i tokens of the abstention; ("done",).
Hyp = tuple


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode alphabet for bytes, inverted (the table byte-level BPE vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass(frozen=True)
class Vocab:
    """The vocabulary as bytes, with a byte trie: ``trie`` is nested dicts, a node's ``-1`` key holds the ids ending there."""

    token_bytes: tuple[bytes | None, ...]
    trie: dict
    eos_id: int


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token id's bytes (None for special and added tokens, which an answer never copies)."""
    dec = _byte_decoder()
    specials = set(getattr(tokenizer, "all_special_ids", []) or []) | set((getattr(tokenizer, "added_tokens_decoder", None) or {}).keys())
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    byte_level = all(ch in dec for t in tokens[:2000] if t for ch in t)
    out: list[bytes | None] = []
    for i, t in enumerate(tokens):
        if t is None or i in specials:
            out.append(None)
        elif byte_level:
            out.append(bytes(dec[ch] for ch in t) if all(ch in dec for ch in t) else None)
        else:  # SentencePiece: ▁ marks a space; <0xNN> byte tokens
            out.append(bytes([int(t[3:5], 16)]) if t.startswith("<0x") and t.endswith(">") and len(t) == 6 else t.replace("\u2581", " ").encode())
    return out


def token_pieces(tokenizer: Any) -> list[str]:
    """Each token id's text as the tokenizer writes it alone ("" for an id without a token); found once per
    tokenizer. What the JSON guard (:mod:`~rag_pipeline.answer.structured`) and the yes/no openings
    (:mod:`~rag_pipeline.answer.polar`) scan."""
    cached = getattr(tokenizer, "_rag_token_pieces", None)
    if cached is None:
        cached = [tokenizer.convert_tokens_to_string([t]) if t is not None else ""
                  for t in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
        tokenizer._rag_token_pieces = cached
    return cached


def build_vocab(tokenizer: Any) -> Vocab:
    """The byte view of ``tokenizer``'s vocabulary (cached per tokenizer object)."""
    cached = getattr(tokenizer, "_rag_grounded_vocab", None)
    if cached is not None:
        return cached
    tb = token_bytes(tokenizer)
    trie: dict = {}
    for i, b in enumerate(tb):
        if not b:
            continue
        node = trie
        for byte in b:
            node = node.setdefault(byte, {})
        node.setdefault(-1, []).append(i)
    vocab = Vocab(tuple(tb), trie, int(tokenizer.eos_token_id))
    tokenizer._rag_grounded_vocab = vocab
    return vocab


def _matches(trie: dict, text: bytes, start: int) -> list[tuple[int, int]]:
    """(token id, byte length) of every token spelling a prefix of ``text[start:]``."""
    out, node, i = [], trie, start
    while i < len(text) and text[i] in node:
        node = node[text[i]]
        i += 1
        out += [(t, i - start) for t in node.get(-1, ())]
    return out


def _is_word(b: int) -> bool:
    return chr(b).isalnum() if b < 128 else True  # non-ASCII bytes belong to letters here


class GroundedConstraint:
    """The answers allowed for one prompt: a span of one of ``documents`` + its citation, or ABSTAIN.

    Args:
        tokenizer: the generator's tokenizer.
        documents: the document texts in prompt order (document ``n`` is ``documents[n - 1]``).
        abstain: allow the abstention sentence.
        yes_no: the question may be answered yes or no (:func:`rag_pipeline.answer.polar.may_be_yes_no`): a span
            opening with "Yes" or "No" is then an answer whatever its words, as the answer check rules.
    """

    def __init__(self, tokenizer: Any, documents: list[str], abstain: bool = True, yes_no: bool = True) -> None:
        self.vocab = build_vocab(tokenizer)
        self.yes_no = yes_no
        self.texts = list(documents)
        self.docs = [d.encode("utf-8") for d in documents]
        self._showable_cache: dict[tuple[int, int, int], bool] = {}
        self.cites = [tokenizer(f" [{n}]", add_special_tokens=False)["input_ids"] for n in range(1, len(documents) + 1)]
        self.abstain_ids = tokenizer(ABSTAIN, add_special_tokens=False)["input_ids"] if abstain else []
        self._cache: dict[tuple[int, ...], frozenset[Hyp]] = {}

    # ---- the automaton

    def _starts(self) -> list[tuple[Hyp, int]]:
        """(hypothesis, token id) pairs for a first token: a word start of a document, with or without a space."""
        out = []
        for n, d in enumerate(self.docs, 1):
            for p in range(len(d)):
                if _is_word(d[p]) and (p == 0 or not _is_word(d[p - 1])):
                    out += [(("span", n, p, p + k), t) for t, k in _matches(self.vocab.trie, d, p)]
                    if p > 0 and d[p - 1:p] == b" ":  # the same word with its leading space
                        out += [(("span", n, p, p - 1 + k), t) for t, k in _matches(self.vocab.trie, d, p - 1)]
        if self.abstain_ids:
            out.append((("abstain", 1), self.abstain_ids[0]))
        return out

    def _next(self, h: Hyp) -> list[tuple[Hyp, int]]:
        """(next hypothesis, token id) pairs that continue hypothesis ``h``."""
        kind = h[0]
        if kind == "span":
            _, n, start, end = h
            d = self.docs[n - 1]
            out = [(("span", n, start, end + k), t) for t, k in _matches(self.vocab.trie, d, end)]
            if (end == len(d) or not (_is_word(d[end]) and _is_word(d[end - 1]))) and self._showable(n, start, end):
                out.append((("cite", n, 1), self.cites[n - 1][0]))  # a word boundary after an answer the check shows: may cite
            return out
        if kind == "cite":
            _, n, i = h
            return [(("cite", n, i + 1), self.cites[n - 1][i])] if i < len(self.cites[n - 1]) else [(("done",), self.vocab.eos_id)]
        if kind == "abstain":
            i = h[1]
            return [(("abstain", i + 1), self.abstain_ids[i])] if i < len(self.abstain_ids) else [(("done",), self.vocab.eos_id)]
        return []

    def _showable(self, n: int, start: int, end: int) -> bool:
        """Whether the span start..end of document ``n`` is an answer the answer check shows (a content word, not only a refusal's subject)."""
        key = (n, start, end)
        if key not in self._showable_cache:
            text = self.docs[n - 1][start:end].decode("utf-8", "ignore")
            self._showable_cache[key] = answer_problem(text, [self.texts[n - 1]], yes_no=self.yes_no) is None
        return self._showable_cache[key]

    def _expand(self, state: frozenset[Hyp] | None) -> list[tuple[Hyp, int]]:
        return self._starts() if state is None else [x for h in state for x in self._next(h)]

    def state(self, generated: tuple[int, ...]) -> frozenset[Hyp] | None:
        """The hypotheses consistent with ``generated`` (None before the first token; empty: off the automaton)."""
        if not generated:
            return None
        if generated in self._cache:
            return self._cache[generated]
        prev = self.state(generated[:-1])
        nxt = frozenset(h for h, t in self._expand(prev) if t == generated[-1]) if prev is None or prev else frozenset()
        self._cache[generated] = nxt
        return nxt

    def allowed(self, generated: list[int] | tuple[int, ...]) -> list[int]:
        """Token ids allowed after ``generated`` (the answer's ids so far); EOS alone once an answer is complete."""
        state = self.state(tuple(generated))
        if state is not None and not state:
            return [self.vocab.eos_id]  # unreachable under the constraint; end rather than fail
        return sorted({t for _, t in self._expand(state)}) or [self.vocab.eos_id]


class GroundedSummaryConstraint(GroundedConstraint):
    """A grounded summary (``ask --task summary --grounded``): one to ``max_sentences`` sentences, each a span
    of one shown document (as :class:`GroundedConstraint` copies an answer, without ``[``, ``]`` or a line
    break) followed by that document's citation `` [n]`` and a full stop, separated by spaces; or the
    abstention. Every sentence is then copied from the passage it cites."""

    def __init__(self, tokenizer: Any, documents: list[str], max_sentences: int, abstain: bool = True) -> None:
        super().__init__(tokenizer, documents, abstain)
        self.max_sentences = max_sentences
        self.stop_ids = tokenizer(".", add_special_tokens=False)["input_ids"]
        self._sentence_starts: dict[int, list[tuple[Hyp, int]]] = {}  # per sentence index: every later sentence shares them

    @staticmethod
    def _copyable(token: int, vocab: Vocab) -> bool:
        b = vocab.token_bytes[token]
        return b is not None and not any(c in b for c in b"[]\n")

    def _starts(self, k: int = 0) -> list[tuple[Hyp, int]]:
        """Sentence ``k``'s first token: a word start (the first sentence's also without its space, and the abstention)."""
        if k not in self._sentence_starts:
            self._sentence_starts[k] = self._sentence_start(k)
        return self._sentence_starts[k]

    def _sentence_start(self, k: int) -> list[tuple[Hyp, int]]:
        out = []
        for h, t in super()._starts():
            if h[0] == "span" and self._copyable(t, self.vocab):
                spaced = h[3] - h[2] < len(self.vocab.token_bytes[t])  # the token brings the space before the word
                if k == 0 or spaced:
                    out.append(((*h, k), t))
            elif h[0] == "abstain" and k == 0:
                out.append((h, t))
        return out

    def _next(self, h: Hyp) -> list[tuple[Hyp, int]]:
        kind = h[0]
        if kind == "span":
            _, n, start, end, k = h
            out = [((*x[:4], k), t) for x, t in super()._next(("span", n, start, end))
                   if x[0] == "span" and self._copyable(t, self.vocab)]
            d = self.docs[n - 1]
            if (end == len(d) or not (_is_word(d[end]) and _is_word(d[end - 1]))) and self._showable(n, start, end):
                out.append((("cite", n, 1, k), self.cites[n - 1][0]))
            return out
        if kind == "cite" and len(h) == 4:
            _, n, i, k = h
            return [(("cite", n, i + 1, k), self.cites[n - 1][i])] if i < len(self.cites[n - 1]) else [(("stop", 1, k), self.stop_ids[0])]
        if kind == "stop":
            _, i, k = h
            if i < len(self.stop_ids):
                return [(("stop", i + 1, k), self.stop_ids[i])]
            more = self._starts(k + 1) if k + 1 < self.max_sentences else []
            return [(("done",), self.vocab.eos_id), *more]
        return super()._next(h)
