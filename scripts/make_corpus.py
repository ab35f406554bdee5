#!/usr/bin/env python3
"""Build the bundled Disfl-QA corpus from the BIG-bench 1.0.0 source package.

The BIG-bench task ``disfl_qa`` (``bigbench/benchmark_tasks/disfl_qa/task.json``
inside the ``bigbench-1.0.0`` source tarball) holds 8,000 examples.  Each
example's ``input`` is a disfluent question, followed by ``\\ncontext: `` and a
Wikipedia paragraph (SQuAD v2); its ``target`` is the answer span, or
``"unknown"`` when the question cannot be answered from the paragraph.

The question and the paragraph are whitespace-tokenised (every punctuation mark
is a token of its own: ``Earth ' s``, ``( 1990 )``, ``40 , 000``), while the
targets keep SQuAD's original spelling.  :func:`detokenize` rejoins the tokens
so the text reads like normal English again and the answers are once more
verbatim substrings of their paragraph.

Output (all JSON Lines, UTF-8, keys sorted, byte-identical on re-runs)::

    <output>/documents.jsonl      {"id", "title", "text"}  one per paragraph
    <output>/qa/train.jsonl       {"id", "question", "answer", "doc_id", "answerable"}
    <output>/qa/dev.jsonl
    <output>/qa/test.jsonl

The split is by paragraph (80 / 10 / 10 %), so no paragraph serves two splits.

Usage::

    pip download --no-deps bigbench==1.0.0 -d /tmp/bb
    python scripts/make_corpus.py --tarball /tmp/bb/bigbench-1.0.0.tar.gz

Only the Python standard library is used.
"""

import argparse
import hashlib
import json
import random
import re
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

TARBALL_NAME = "bigbench-1.0.0.tar.gz"
TASK_SUFFIX = "bigbench/benchmark_tasks/disfl_qa/task.json"
CONTEXT_SEPARATOR = "\ncontext:"
UNANSWERABLE_TARGET = "unknown"
SPLIT_FRACTIONS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
TITLE_MAX_WORDS = 8

DOWNLOAD_HINT = (
    "Download the BIG-bench 1.0.0 source package first, e.g.\n"
    "    pip download --no-deps bigbench==1.0.0 -d /tmp/bb\n"
    "and then run\n"
    "    python scripts/make_corpus.py --tarball /tmp/bb/bigbench-1.0.0.tar.gz"
)

# --------------------------------------------------------------------------
# Detokenisation
# --------------------------------------------------------------------------

#: Tokens written without a space before them.
_GLUE_LEFT = frozenset(",.;:!?%)]}…”»》′″")
#: Tokens written without a space after them.
_GLUE_RIGHT = frozenset("([{$£€¥#“‘«《")
#: Tokens written without a space on either side (``well - known``, ``and / or``).
_GLUE_BOTH = frozenset("-/—⁄")
#: Invisible characters that the source split off as tokens of their own.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\ufeff\u00ad")
#: What may follow an apostrophe inside a word (``Earth's``, ``don't``, ``we'll``).
_CONTRACTION_SUFFIXES = frozenset({"s", "t", "re", "ve", "ll", "d", "m"})
#: Tokens that end a clause: a quote right before one of these closes.
_CLOSERS = frozenset(",.;:!?)]}…")
#: Tokens after which a quote opens.
_OPENERS = frozenset("([{“‘«《-–—/:")
#: Upper-case initialisms written without inner spaces (others: ``G. H. Hardy``).
_ACRONYMS = frozenset({"U.S", "U.S.A", "U.K", "U.N", "D.C", "E.U", "L.A", "L.P", "J.I", "E.I", "U.S.S.R"})
#: Editorial Wikipedia markers glued to the preceding word (``2010[update]``).
_WIKI_MARKERS = frozenset(
    {"update", "citation needed", "who ?", "when ?", "which ?", "where ?", "vague", "clarification needed",
     "dubious – discuss", "not in citation given", "original research ?", "according to whom ?", "by whom ?",
     "page needed", "full citation needed", "verification needed", "better source needed", "needs update"}
)
#: Currency prefixes glued to a following ``$`` (``US$100``).
_DOLLAR_PREFIXES = frozenset({"US", "A", "C", "NZ", "HK", "S", "R", "NT", "Can", "Mex"})
_DIGITS = re.compile(r"^\d+$")
_GROUP_HEAD = re.compile(r"^\d{1,3}$")
_GROUP_TAIL = re.compile(r"^\d{3}(?:s|th)?$")
_WORDLIKE = re.compile(r"\w")
_ROMAN = re.compile(r"^[IVXLC]+$")
_BINARY_LEFT = re.compile(r"(?:^|\W)[^\W\d_]$|\d$|^\d|[)\]!]$|^[A-Z]+$")
_ALPHA = re.compile(r"^[^\W\d_]+$")
_FUNCTION_NAME = re.compile(r"^(?:[A-Z]{1,5}|[a-z]|\d{1,3}|\d+[a-z]+)$")
_FUNCTION_ARGS = re.compile(r"^[a-z0-9()+\-−]{1,8}$")


def _is_word(token: str | None) -> bool:
    """Return True if ``token`` contains a letter or digit."""
    return token is not None and bool(_WORDLIKE.search(token))


def _is_single_letter(token: str | None) -> bool:
    """Return True for one-letter alphabetic tokens (``U`` in ``U . S .``)."""
    return token is not None and len(token) == 1 and token.isalpha()


def _matching(tokens: list[str], start: int, opener: str, closer: str, limit: int = 12) -> int | None:
    """Index of the bracket closing ``tokens[start]`` within ``limit`` tokens."""
    depth = 0
    for j in range(start, min(len(tokens), start + limit + 2)):
        if tokens[j] == opener:
            depth += 1
        elif tokens[j] == closer:
            depth -= 1
            if depth == 0:
                return j
    return None


def _initialism_dots(tokens: list[str]) -> set[int]:
    """Indices of ``.`` tokens inside initialisms that are written unspaced.

    Runs like ``U . S .``, ``e . g .``, ``a . k . a .`` are split into same-case
    stretches; lower-case stretches are always joined (``e.g.``, ``p.m.``),
    upper-case ones only when listed in :data:`_ACRONYMS`, so personal initials
    keep their spaces (``G. H. Hardy``, ``W. E. B. Du Bois``).
    """
    joined: set[int] = set()
    n = len(tokens)
    j = 0
    while j < n:
        if not (_is_single_letter(tokens[j]) and j + 2 < n and tokens[j + 1] == "." and _is_single_letter(tokens[j + 2])):
            j += 1
            continue
        run = [j]  # indices of the letters
        while run[-1] + 2 < n and tokens[run[-1] + 1] == "." and _is_single_letter(tokens[run[-1] + 2]):
            run.append(run[-1] + 2)
        # split into stretches of equal case
        stretch = [run[0]]
        stretches = []
        for k in run[1:]:
            if tokens[k].isupper() == tokens[stretch[-1]].isupper():
                stretch.append(k)
            else:
                stretches.append(stretch)
                stretch = [k]
        stretches.append(stretch)
        for part in stretches:
            if len(part) < 2:
                continue
            letters = ".".join(tokens[k] for k in part)
            if tokens[part[0]].islower() or letters in _ACRONYMS:
                joined.update(k + 1 for k in part[:-1])
        j = run[-1] + 1
    return joined


def _has_closing_single_quote(tokens: list[str], i: int, limit: int = 10) -> bool:
    """True if an apostrophe within ``limit`` tokens after ``i`` can close a quote."""
    for j in range(i + 2, min(len(tokens), i + 2 + limit)):
        if tokens[j] in ("'", "’"):
            after = tokens[j + 1] if j + 1 < len(tokens) else None
            return after is None or after.lower() not in _CONTRACTION_SUFFIXES
        if tokens[j] in (".", "?", "!", '"'):
            return False
    return False


def detokenize(text: str) -> str:
    """Rejoin whitespace-tokenised text into ordinary running text.

    The source separates every punctuation mark by spaces; this function
    decides, token by token, whether a space belongs before and after it:

    * ``Earth ' s`` -> ``Earth's``, ``don ' t`` -> ``don't``, ``states ' rights``
      -> ``states' rights``, ``Qur ' an`` -> ``Qur'an``; ``' quoted '`` and
      ``" quoted "`` -> ``'quoted'``, ``"quoted"`` (quote pairs are tracked; a
      quote before a closing mark closes, one after an opening bracket opens);
    * ``( 1990 )`` -> ``(1990)``; ``, . ; : ! ? %`` stick to the left;
      ``O ( n2 )`` -> ``O(n2)``; ``2010 [ update ]`` -> ``2010[update]``;
    * ``$ 5`` -> ``$5``, ``US $ 5`` -> ``US$5``; ``well - known`` ->
      ``well-known``; ``and / or`` -> ``and/or``; ``1910 – 1940`` -> ``1910–1940``;
    * ``10 , 000`` -> ``10,000``; ``3 . 5`` -> ``3.5``; ``10 : 30`` -> ``10:30``;
    * ``U . S .`` -> ``U.S.``, ``e . g .`` -> ``e.g.``, but ``G. H. Hardy``;
    * ``15 ° C`` -> ``15 °C``, ``45 ° N`` -> ``45°N``; ``AT & T`` -> ``AT&T``;
      ``p − 1`` stays spaced while a unary ``− 2`` becomes ``−2``.

    Text that is already ordinary (no isolated punctuation tokens) passes
    through unchanged apart from collapsing runs of whitespace.
    """
    tokens = text.split()
    # ``' '`` (two apostrophes) is an old-style opening double quote.
    merged: list[str] = []
    for tok in tokens:
        if tok == "'" and merged and merged[-1] == "'" and len(merged) >= 2 and not _is_word(merged[-2]):
            merged[-1] = '"'
        else:
            merged.append(tok)
    tokens = merged
    n = len(tokens)
    glue_left = [False] * n
    glue_right = [False] * n
    initialism_dots = _initialism_dots(tokens)
    double_open = False
    single_open = False

    def tok_at(j: int) -> str | None:
        return tokens[j] if 0 <= j < n else None

    for i, tok in enumerate(tokens):
        prev, nxt = tok_at(i - 1), tok_at(i + 1)
        if tok in _INVISIBLE:
            glue_left[i] = _is_word(prev)  # attach to the adjacent word(s)
            glue_right[i] = _is_word(nxt)
        elif tok == "/" and (prev in _INVISIBLE or nxt in _INVISIBLE):
            pass  # 9°19′E\ufeff / \ufeff47.650°N keeps its spaces
        elif tok == "–":
            prev, nxt = ("0" if prev == "%" else prev), ("0" if nxt == "%" else nxt)
            spaced = (
                not _is_word(prev)
                or not _is_word(nxt)
                or (_ALPHA.match(prev or "") is not None) != (_ALPHA.match(nxt or "") is not None)
                or (_ROMAN.match(prev or "") is not None and _ROMAN.match(nxt or "") is not None)
            )
            glue_left[i] = glue_right[i] = not spaced  # 1910–1940, Miller–Rabin; but 24 August – 3 October
        elif tok == '"':
            if prev is not None and _DIGITS.match(prev) and "'" in tokens[max(0, i - 4):i - 1]:
                glue_left[i] = True  # arc-seconds / inches: 9' 58.23"
                continue
            if prev is None or prev in _OPENERS or prev in _GLUE_RIGHT:
                is_open = True
            elif nxt is None or nxt in _CLOSERS:
                is_open = False
            else:
                is_open = not double_open
            if is_open:
                glue_right[i] = True
                double_open = True
            else:
                glue_left[i] = True
                double_open = False
        elif tok in ("'", "’"):
            if _is_word(prev) and nxt is not None and nxt.lower() in _CONTRACTION_SUFFIXES:
                glue_left[i] = glue_right[i] = True  # Earth's, don't, 1960's
            elif prev == "o" and nxt == "clock":
                glue_left[i] = glue_right[i] = True  # o'clock
            elif single_open:
                glue_left[i] = True  # closing quote
                single_open = False
            elif prev is not None and _DIGITS.match(prev):
                glue_left[i] = True  # feet / arc-minutes: 9' 58"
            elif prev is None or prev in _OPENERS or prev in _GLUE_RIGHT:
                glue_right[i] = True
                single_open = True
            elif nxt is None or nxt in _CLOSERS:
                glue_left[i] = True
            elif _has_closing_single_quote(tokens, i):
                glue_right[i] = True  # opening quote: a 'new world'
                single_open = True
            elif prev and _ALPHA.match(prev) and nxt and _ALPHA.match(nxt) and (
                prev[-1] not in "sSzZ" or nxt[:1].islower() and len(prev) <= 4
            ):
                glue_left[i] = glue_right[i] = True  # Qur'an, d'état, Mi'kmaq, O'Brien
            else:
                glue_left[i] = True  # plural possessive (the states' rights), closing ’
        elif tok == "‘":
            glue_right[i] = True
        elif tok in ("−", ">", "<"):
            if prev is not None and _BINARY_LEFT.search(prev):
                pass  # binary operator: p − 1, n < p
            else:
                glue_right[i] = True  # unary: −2, −11.7 °C, (>500 Da)
        elif tok == "°":
            glue_left[i] = True
            if nxt in {"C", "F", "K"}:
                glue_left[i] = False
                glue_right[i] = True  # 15 °C
            elif nxt is not None and (re.match(r"^[NSEW]$", nxt) or (_DIGITS.match(nxt) and tok_at(i + 2) == "′")):
                glue_right[i] = True  # 45°N, 47°39′N
        elif tok == "′":
            glue_left[i] = True
            if nxt is not None and re.match(r"^[NSEW]$", nxt):
                glue_right[i] = True
        elif tok == "&":
            if prev and nxt and re.match(r"^[A-Z]{1,2}$", prev) and re.match(r"^[A-Z]{1,2}$", nxt):
                glue_left[i] = glue_right[i] = True  # AT&T, S&P
        elif tok == "$":
            glue_right[i] = True
            glue_left[i] = prev in _DOLLAR_PREFIXES  # US$100,000
        elif tok == ",":
            glue_left[i] = True
            if prev and nxt and _GROUP_HEAD.match(prev) and _GROUP_TAIL.match(nxt):
                # 40 , 000 -> 40,000 (and 1 , 000 , 000); not after a decimal point.
                if not (tok_at(i - 2) == "." and _DIGITS.match(tok_at(i - 3) or "")):
                    glue_right[i] = True
        elif tok == ".":
            if nxt == "." and prev != ".":
                glue_left[i] = _is_word(prev)  # ellipsis: "word..." but ", ..."
                glue_right[i] = True
                continue
            glue_left[i] = True
            if i in initialism_dots or nxt == ".":
                glue_right[i] = True  # U.S., e.g., a.m., ...
            elif nxt is not None and prev is not None and nxt[:1].isdigit() and (
                _DIGITS.match(prev) or (re.match(r"^[A-Z]$", prev) and tok_at(i - 2) != ".")
            ):
                glue_right[i] = True  # 3.5, X.25
            elif nxt == "NET":
                glue_right[i] = True  # .NET
        elif tok == ":":
            glue_left[i] = True
            if prev and nxt and _DIGITS.match(prev) and _DIGITS.match(nxt):
                glue_right[i] = True  # 10:30
        elif tok == "+":
            if nxt == "+":
                glue_left[i] = glue_right[i] = True  # C++
            elif prev == "+":
                glue_left[i] = True
            elif prev and len(prev) > 1 and _ALPHA.match(prev) and prev[:1].isupper() and not (nxt or "0")[:1].isdigit():
                glue_left[i] = True  # Sky+ PVR
        elif tok == "(":
            glue_right[i] = True
            close = _matching(tokens, i, "(", ")", limit=6)
            if prev and close is not None and _FUNCTION_NAME.match(prev):
                inner = tokens[i + 1:close]
                args = "".join(inner)
                short = all(len(t) == 1 or re.search(r"\d", t) for t in inner)
                if short and _FUNCTION_ARGS.match(args) and (re.search(r"[a-z]", args) or len(args) <= 2):
                    glue_left[i] = True  # O(n2), T(n), Article 101(1)
        elif tok == "[":
            glue_right[i] = True
            close = _matching(tokens, i, "[", "]", limit=6)
            if prev and close is not None:
                inner = " ".join(tokens[i + 1:close])
                if inner in _WIKI_MARKERS or (re.match(r"^[a-z]{1,2}$", inner) and _is_word(prev)):
                    glue_left[i] = True  # 2010[update], Z[i], constitute[d]
        elif tok in _GLUE_BOTH:
            glue_left[i] = glue_right[i] = True
        elif tok in _GLUE_LEFT:
            glue_left[i] = True
        elif tok in _GLUE_RIGHT:
            glue_right[i] = True

    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i > 0 and not (glue_right[i - 1] or glue_left[i]):
            out.append(" ")
        out.append(tok)
    return "".join(out)


# --------------------------------------------------------------------------
# Cleaning of questions (JSON escape debris)
# --------------------------------------------------------------------------

_UNICODE_ESCAPE = re.compile(r"\s*(?:\\\s*)+u([0-9a-fA-F]{4})")
_QUOTE_ESCAPE = re.compile(r"(?:\\\s*)+\"")
_TAB_ESCAPE = re.compile(r"(?:\\\s*)+t")
_PLACEHOLDER = re.compile(r"^(?:#\s*value\s*!|(?:question\s+|answer\s+)?n\s*/\s*a|no question)$", re.I)


def _unescape(match: re.Match[str]) -> str:
    """Replace one leftover ``\\ uXXXX`` escape by its character."""
    code = int(match.group(1), 16)
    char = chr(code)
    if code < 0x20 or code == 0x7F:
        return " "  # control characters (mostly U+007F) are debris
    if 0x370 <= code <= 0x3FF:
        return " " + char  # Greek letters are standalone symbols (the ζ-function)
    return char  # letters inside words: Czerniak\u00f3w -> Czerniaków


def clean_question(raw: str) -> str:
    """Undo the JSON-escape debris found in some questions, then detokenize.

    A few questions contain literal escapes that the tokenizer split apart,
    e.g. ``Czerniak \\\\ \\\\ u00f3w``, ``\\\\ " Apologie \\\\ "`` or ``\\\\ t``.
    """
    text = _UNICODE_ESCAPE.sub(_unescape, raw)
    text = _QUOTE_ESCAPE.sub('"', text)
    text = _TAB_ESCAPE.sub(" ", text)
    text = text.replace("\\", " ")
    return detokenize(text)


def junk_reason(question: str) -> str | None:
    """Return why a (cleaned) question is unusable, or None if it is fine."""
    words = re.findall(r"\w+", question)
    if not words:
        return "empty"
    if _PLACEHOLDER.match(question.strip()):
        return "placeholder"
    if "NO_ANSWER" in question:
        return "pasted annotation table"
    if len(words) < 4 and not question.rstrip().endswith("?"):
        return "truncated"
    return None


# --------------------------------------------------------------------------
# Corpus construction
# --------------------------------------------------------------------------


# Wikipedia maintenance markers and footnote letters glued to words ("Empire[citation needed]"):
# they break whole-word answer matching and carry no content.
WIKI_MARKER = re.compile(
    r"\[(?:[^\[\]]{0,40} needed|update|note \d+|who\?|when\?|vague|unreliable source\?|"
    r"not in citation given|according to whom\?|original research\?|[a-z]|\d{1,3})\]"
)


def strip_wiki_markers(text: str) -> str:
    """Remove maintenance markers and footnote references, and the space they leave."""
    return re.sub(r" {2,}", " ", WIKI_MARKER.sub("", text)).replace(" .", ".").strip()


def stable_hash(*parts: str, length: int = 12) -> str:
    """Hex prefix of the SHA-256 of ``parts`` joined by NUL characters."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:length]


_TITLE_STOPWORDS = frozenset(
    "a an and as at by for from in into of on or the to was were with which who that is are its their".split()
)


def derive_title(text: str, max_words: int = TITLE_MAX_WORDS) -> str:
    """Derive a short title: the first words of the paragraph's first sentence.

    The task does not carry the SQuAD article titles, so the title is the
    opening of the first sentence, cut to ``max_words`` words (with ``...``
    when cut) and stripped of trailing punctuation.
    """
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", text.strip(), maxsplit=1)[0]
    words = first.split()
    kept = words[:max_words]
    if len(words) > max_words:
        while len(kept) > 1 and kept[-1].lower().strip(",;:") in _TITLE_STOPWORDS:
            kept.pop()  # do not end on "of the"
    title = " ".join(kept).rstrip(" ,;:.")
    if len(words) > max_words:
        title += "..."
    return title


@dataclass
class Document:
    """One distinct Wikipedia paragraph."""

    id: str
    title: str
    text: str


@dataclass
class QA:
    """One question about a paragraph."""

    id: str
    question: str
    answer: list[str]
    doc_id: str
    answerable: bool

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-serialisable record."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "doc_id": self.doc_id,
            "answerable": self.answerable,
        }


@dataclass
class Stats:
    """Counters reported at the end of a run."""

    examples: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    merged_duplicates: int = 0
    conflicting_duplicates: int = 0
    answers_changed_by_detok: int = 0
    not_verbatim: list[tuple[str, str]] = field(default_factory=list)


def find_tarball(explicit: str | None) -> Path:
    """Locate the bigbench source tarball or exit with download instructions."""
    if explicit:
        path = Path(explicit)
        if path.is_file():
            return path
        sys.exit(f"error: tarball not found: {path}\n{DOWNLOAD_HINT}")
    for candidate in (Path.cwd() / TARBALL_NAME, Path("/tmp/bb") / TARBALL_NAME):
        if candidate.is_file():
            return candidate
    sys.exit(f"error: {TARBALL_NAME} not found in . or /tmp/bb\n{DOWNLOAD_HINT}")


def load_task(tarball: Path) -> dict[str, Any]:
    """Read ``disfl_qa/task.json`` straight out of the source tarball."""
    with tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(TASK_SUFFIX):
                handle = archive.extractfile(member)
                if handle is None:
                    break
                with handle:
                    return json.load(handle)
    sys.exit(f"error: {TASK_SUFFIX} not found in {tarball}")


def split_input(raw_input: str) -> tuple[str, str]:
    """Split an example's ``input`` into (raw question, raw paragraph)."""
    if CONTEXT_SEPARATOR not in raw_input:
        raise ValueError(f"no context separator in input: {raw_input[:80]!r}")
    question, context = raw_input.split(CONTEXT_SEPARATOR, 1)
    return question.strip(), context.strip()


def dedupe(items: Iterable[str]) -> list[str]:
    """Drop empty strings and duplicates, keeping first-seen order."""
    seen: dict[str, None] = {}
    for item in items:
        if item and item not in seen:
            seen[item] = None
    return list(seen)


def build(task: dict[str, Any]) -> tuple[list[Document], list[QA], Stats]:
    """Turn the task's examples into documents and QA records."""
    stats = Stats()
    documents: dict[str, Document] = {}
    # (doc_id, question) -> list of raw targets, in task order
    grouped: dict[tuple[str, str], list[str]] = {}
    for example in task["examples"]:
        stats.examples += 1
        raw_question, raw_context = split_input(example["input"])
        source_text = detokenize(raw_context)
        # The id derives from the source paragraph, so ids (and splits) survive text clean-ups.
        doc_id = "p-" + stable_hash(source_text)
        text = strip_wiki_markers(source_text)
        if doc_id not in documents:
            documents[doc_id] = Document(doc_id, derive_title(text), text)
        question = clean_question(raw_question)
        reason = junk_reason(question)
        if reason:
            stats.dropped[reason] += 1
            continue
        targets = example["target"]
        if isinstance(targets, str):
            targets = [targets]
        grouped.setdefault((doc_id, question), []).extend(t.strip() for t in targets)

    qas: list[QA] = []
    for (doc_id, question), targets in grouped.items():
        text = documents[doc_id].text
        if len(targets) > 1:
            stats.merged_duplicates += 1
        answers_raw = dedupe(t for t in targets if t.lower() != UNANSWERABLE_TARGET)
        has_unknown = any(t.lower() == UNANSWERABLE_TARGET for t in targets)
        if answers_raw and has_unknown:
            stats.conflicting_duplicates += 1  # keep the answers
        answers: list[str] = []
        for raw in answers_raw:
            detok = strip_wiki_markers(detokenize(raw))
            if detok != raw:
                stats.answers_changed_by_detok += 1
            # Prefer whichever spelling occurs verbatim in the paragraph.
            chosen = detok if detok in text or raw not in text else raw
            answers.append(chosen)
            if chosen not in text:
                stats.not_verbatim.append((doc_id, chosen))
        answers = dedupe(answers)
        qa_id = "q-" + stable_hash(doc_id, question)
        qas.append(QA(qa_id, question, answers, doc_id, bool(answers)))
    return sorted(documents.values(), key=lambda d: d.id), qas, stats


def split_documents(doc_ids: list[str], seed: int) -> dict[str, str]:
    """Assign each paragraph to train/dev/test (80/10/10) with a seeded shuffle."""
    order = sorted(doc_ids)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_train = int(n * SPLIT_FRACTIONS[0][1])
    n_dev = int(n * SPLIT_FRACTIONS[1][1])
    assignment: dict[str, str] = {}
    for index, doc_id in enumerate(order):
        if index < n_train:
            assignment[doc_id] = "train"
        elif index < n_train + n_dev:
            assignment[doc_id] = "dev"
        else:
            assignment[doc_id] = "test"
    return assignment


def dump_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSON Lines with stable bytes; return the line count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records]
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)
    return len(lines)


def write_corpus(documents: list[Document], qas: list[QA], output: Path, seed: int) -> dict[str, list[QA]]:
    """Write documents.jsonl and qa/{train,dev,test}.jsonl; return the splits."""
    dump_jsonl(
        output / "documents.jsonl",
        ({"id": d.id, "title": d.title, "text": d.text} for d in documents),
    )
    doc_rank = {d.id: i for i, d in enumerate(documents)}
    assignment = split_documents([d.id for d in documents], seed)
    splits: dict[str, list[QA]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    for qa in qas:
        splits[assignment[qa.doc_id]].append(qa)
    for name, items in splits.items():
        items.sort(key=lambda q: (doc_rank[q.doc_id], q.id))
        dump_jsonl(output / "qa" / f"{name}.jsonl", (q.to_json() for q in items))
    return splits


def report(documents: list[Document], splits: dict[str, list[QA]], stats: Stats) -> None:
    """Print the counts that corpus/README.md quotes."""
    print(f"examples in task.json:            {stats.examples}")
    print(f"documents (distinct paragraphs):  {len(documents)}")
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.dropped.items()))
    print(f"questions dropped:                {sum(stats.dropped.values())} ({dropped})")
    print(f"duplicate (paragraph, question):  {stats.merged_duplicates} merged"
          f" ({stats.conflicting_duplicates} with both answer and 'unknown')")
    total = 0
    for name, items in splits.items():
        answerable = sum(q.answerable for q in items)
        docs = len({q.doc_id for q in items})
        total += len(items)
        print(f"{name:5s}: {docs:4d} paragraphs, {len(items):5d} questions"
              f" ({answerable} answerable, {len(items) - answerable} unanswerable)")
    print(f"questions total:                  {total}")
    print(f"answers changed by detokenize:    {stats.answers_changed_by_detok}")
    print(f"answers not verbatim in paragraph: {len(stats.not_verbatim)}")
    for doc_id, answer in stats.not_verbatim:
        print(f"    {doc_id}: {answer!r}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", help=f"path to {TARBALL_NAME} (default: ./ or /tmp/bb/)")
    parser.add_argument("--output", default="corpus/disfl_qa", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    args = parser.parse_args(argv)

    tarball = find_tarball(args.tarball)
    task = load_task(tarball)
    documents, qas, stats = build(task)
    splits = write_corpus(documents, qas, Path(args.output), args.seed)
    report(documents, splits, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
