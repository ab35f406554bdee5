"""Question/answer pairs written offline from an index's chunks, for documents without questions.

``build-raft-dataset --index DIR --generate-questions N`` calls :func:`generate`. Quality comes
from filtering, not from the writer:

1. **Chunks across documents**: a seeded round robin over the documents (shuffled), one random
   chunk of each per pass, so N pairs cover N documents before any document gives a second.
2. **Answer first**: candidate answers picked from each chunk by :func:`candidate_answers`
   (dates, numbers, names, noun phrases; whole sentences with ``style="sentence"``).
3. **Question**: ``rules`` (the default, no model) rewrites the sentence holding the candidate as
   a wh-question in place (:func:`rules_question`: "In early August, Montcalm led how many troops
   to the fort?"); a model writer (``hf:``, ``openai:``), shown the chunk and the candidate,
   writes one instead. The embedded 135M model writes questions that do not fit their answer
   (0 of 16 kept on ``examples/marrowick_qa.json``), so it is not the default writer.
4. **Round trip**: a pair is kept only when
   - the question is a question and does not give its answer away (``malformed``, ``leaks_answer``);
   - the retriever ranks its source chunk in the top ``top_k`` for it (``retrieval``);
   - the reader, shown the chunk, answers it with token F1 >= ``min_f1`` against the candidate
     (``answer_mismatch``). The reader is the writer's model, or a tuned adapter reading the chunk
     as ``ask`` does (:class:`AdapterReader`; the reference adapter for ``rules``);
   - it is not a near-duplicate of a question already kept: the same names and numbers and most
     of the same content words (``duplicate``).

Rounds continue on further chunks until N pairs are kept or the chunks run out. Generation is
batched and greedy, so the pairs are the same for the same index, writer, reader and seed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.metrics import extract_answer, f1, is_abstention
from rag_pipeline.prompt import sentence_spans
from rag_pipeline.qa import QAItem
from rag_pipeline.support import STOPWORDS, content_tokens
from rag_pipeline.textnorm import contains_answer, words

log = logging.getLogger(__name__)

Style = Literal["span", "sentence"]
YesNoForm = Literal["sentence", "short"]
NoSwap = Literal["corpus", "passage"]
FILTERS = ("malformed", "leaks_answer", "retrieval", "answer_mismatch", "duplicate")

QUESTION_SYSTEM = ("You write exam questions about a passage. Write one question that the passage answers, whose answer is "
                   "exactly the answer given. Do not include the answer in the question. Reply with the question only.")
QUESTION_USER = "Passage:\n{passage}\n\nAnswer: {answer}\n\nWrite the question whose answer is: {answer}"
ANSWER_SYSTEM = {
    "span": "Answer the question using only the passage. Reply with the answer only, in as few words as possible.",
    "sentence": "Answer the question using only the passage. Reply with one complete sentence.",
}
ANSWER_USER = "Passage:\n{passage}\n\nQuestion: {question}"

# Candidate answers, in the order they are preferred.
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("date", re.compile(rf"\b(?:\d{{1,2}} {_MONTH},? \d{{3,4}}|{_MONTH} \d{{1,2}},? \d{{3,4}}|{_MONTH} \d{{3,4}})\b")),
    ("number", re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:\s?(?:%|per ?cent|percent|million|billion|thousand|hundred|km|kilometres|"
                          r"kilometers|miles|metres|meters|feet|kg|tonnes|tons|years|days|hours|people|species))?(?![\w])")),
    ("name", re.compile(r"\b[A-Z][\w'’-]*[a-z0-9][\w'’-]*(?:\s+(?:(?:of|de|da|del|van|von|der|la|le|the)\s+)?[A-Z][\w'’-]+)*")),
]
_ARTICLE_START = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_MONTHS = frozenset(_MONTH[3:-1].split("|"))
_PHRASE_START = re.compile(r"\b(?:the|a|an)\s+")
_LOWER_RUN = re.compile(r"[a-z][a-z-]*(?: [a-z][a-z-]*)*")  # lower-case words separated by single spaces


@dataclass(frozen=True)
class Candidate:
    """An answer picked from a chunk, before a question is written for it."""

    chunk_id: str
    doc_id: str
    passage: str
    answer: str
    kind: str  # date | number | name | phrase | sentence


@dataclass
class Pair:
    """A written question with what the filters found; ``dropped`` is the filter that dropped it, or None."""

    candidate: Candidate
    question: str
    rank: int | None = None  # 1-based rank of the source chunk for the question; None: not in the top k
    reply: str = ""  # the model's answer in the round trip
    f1: float | None = None
    dropped: str | None = None
    form: str = "span"  # one of FORMS: a wh-question whose answer is the candidate, yes, no, or unanswerable
    answer: str | None = None  # the target when it is not the candidate ("Yes", "No"; '' for unanswerable)

    @property
    def target(self) -> str:
        return self.candidate.answer if self.answer is None else self.answer

    def to_dict(self) -> dict:
        c = self.candidate
        out = {"question": self.question, "answer": self.target, "kind": c.kind, "chunk_id": c.chunk_id, "doc_id": c.doc_id,
               "source_rank": self.rank, "round_trip_answer": self.reply,
               "round_trip_f1": None if self.f1 is None else round(self.f1, 4), "dropped_by": self.dropped}
        return out if self.form == "span" else {**out, "form": self.form, "from_answer": c.answer}

    def to_item(self) -> QAItem:
        """The kept pair as a QA item; yes/no and unanswerable ones carry their chunk as their context."""
        c = self.candidate
        key = hashlib.sha256(f"{c.chunk_id}\x00{self.question}".encode()).hexdigest()[:12]
        where = f"generated from chunk {c.chunk_id}"
        if self.form == "span":
            return QAItem("g-" + key, self.question, [c.answer], c.doc_id, True, where=where)
        answers = [self.target] if self.target else []
        return QAItem("g-" + key, self.question, answers, c.doc_id, bool(answers), where=where, context=c.passage)


@dataclass
class QuestionSettings:
    """How :func:`generate` works; ``build-raft-dataset`` fills it from its own flags."""

    n: int
    style: Style = "span"
    top_k: int = 5  # the source chunk must rank this high for its question
    min_f1: float = 0.5  # round-trip answer against the candidate
    per_chunk: int = 2  # candidates tried per chunk and pass over the chunks (the next ones on the next pass)
    duplicate_jaccard: float = 0.8  # content-word overlap above which two questions about the same names are one question
    batch_size: int = 8
    max_new_tokens: int = 48
    hybrid: bool = True
    seed: int = 0
    max_rounds: int = 6
    docs: frozenset[str] | None = None  # write from these documents' chunks only (None: all)
    yes_no: float = 0.0  # share of n written as yes/no questions, half "yes" (faithful) and half "no" (a swapped fact)
    unanswerable: float = 0.0  # share of n written as unanswerable questions (a swapped anchor), abstention as target
    yes_no_form: YesNoForm = "sentence"  # the whole sentence as a question, or its clause asked as people ask (write_yes_no)
    no_swap: NoSwap = "corpus"  # where a "no" question's swapped fact comes from: the corpus, or the same passage (write_yes_no)

    def __post_init__(self) -> None:
        if not (0.0 <= self.yes_no <= 1.0 and 0.0 <= self.unanswerable <= 1.0 and self.yes_no + self.unanswerable <= 1.0):
            raise ConfigError(f"question_yes_no ({self.yes_no}) and question_unanswerable ({self.unanswerable}) are shares of "
                              "the questions: each between 0 and 1, together at most 1")
        if self.n < 1:
            raise ConfigError(f"generate_questions must be >= 1 to generate, got {self.n}")
        if not 0.0 <= self.min_f1 <= 1.0:
            raise ConfigError(f"question_min_f1 must be between 0 and 1, got {self.min_f1}")
        if self.top_k < 1:
            raise ConfigError(f"question_top_k must be >= 1, got {self.top_k}")
        if self.yes_no_form not in ("sentence", "short"):
            raise ConfigError(f"question_yes_no_form is {self.yes_no_form!r}: use sentence or short")
        if self.no_swap not in ("corpus", "passage"):
            raise ConfigError(f"question_no_swap is {self.no_swap!r}: use corpus or passage")


@dataclass
class Result:
    """What :func:`generate` made: the QA items kept, the counts, and every pair with its fate."""

    items: list[QAItem]
    report: dict[str, Any]
    kept: list[Pair] = field(default_factory=list)
    dropped: list[Pair] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Chunks and candidate answers
# ---------------------------------------------------------------------------------------------


def sample_chunks(store: Any, seed: int, docs: frozenset[str] | None = None) -> Iterator[Any]:
    """Every chunk once (of ``docs`` only, when given), spread across documents: documents in a
    seeded order, one random chunk of each per pass. Only (row, doc_id) pairs are held; chunks
    are read in batches."""
    rng = random.Random(f"{seed}:chunks")
    by_doc: dict[str, list[int]] = {}
    for c in store.iter_chunks():
        if docs is None or c.doc_id in docs:
            by_doc.setdefault(c.doc_id, []).append(c.row)
    docs = sorted(by_doc)
    rng.shuffle(docs)
    for rows in by_doc.values():
        rng.shuffle(rows)
    order = [by_doc[d][p] for p in range(max(map(len, by_doc.values()), default=0)) for d in docs if p < len(by_doc[d])]
    for start in range(0, len(order), 256):
        yield from store.get_rows(order[start : start + 256])


def candidate_answers(text: str, style: Style = "span") -> list[tuple[str, str]]:
    """(answer, kind) candidates of a chunk, best kinds first, each answer once.

    ``span``: dates, numbers, names (runs of capitalised words, a sentence's first word only when
    the same word is capitalised elsewhere), noun phrases ("the wrought iron lattice tower").
    ``sentence``: the chunk's sentences of 5-40 words.
    """
    if style == "sentence":
        sents = [text[s:e].strip() for s, e in sentence_spans(text)]
        return [(s, "sentence") for s in sents if 5 <= len(s.split()) <= 40 and len(content_tokens(s)) >= 3]
    starts = {s for s, _ in sentence_spans(text)}
    found, taken = [], []  # taken: spans of earlier matches ("31" and "March" inside "31 March 1889")
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            answer = m.group(0).strip(" ,.;:'’-")
            if kind == "name":
                answer = _trim_name(text, m.start(), answer, starts)
                answer = "" if answer in _MONTHS else answer
            if answer:
                taken.append(m.span())
                found.append((answer, kind))
    found += [(p, "phrase") for p in noun_phrases(text)]
    seen, out = set(), []
    for answer, kind in found:
        key = " ".join(words(answer))
        if answer and key and key not in seen and content_tokens(answer):
            seen.add(key)
            out.append((answer, kind))
    return out


def noun_phrases(text: str, max_words: int = 4) -> list[str]:
    """Lower-case phrases after an article: up to ``max_words`` words that are not stopwords (the
    last of 3+ letters), then an optional "of (the) word" ("the wrought iron lattice tower", "the
    end of the herring"); at least two words."""
    out = []
    for m in _PHRASE_START.finditer(text):
        run = _LOWER_RUN.match(text, m.end())
        ws = run.group(0).split() if run else []
        n = 0
        while n < min(max_words, len(ws)) and ws[n] not in STOPWORDS:
            n += 1
        head = ws[:n]
        while head and len(head[-1]) < 3:
            head.pop()
        if head and len(head) == n and n < len(ws) and ws[n] == "of":
            k = n + 2 if n + 1 < len(ws) and ws[n + 1] == "the" else n + 1
            if k < len(ws) and len(ws[k]) >= 3 and ws[k] not in STOPWORDS:
                head = ws[: k + 1]
        if len(head) >= 2:
            out.append(" ".join(head))
    return out


def _trim_name(text: str, start: int, name: str, sentence_starts: set[int]) -> str:
    """A name found at a sentence start loses its first word unless that word is capitalised
    mid-sentence elsewhere (it is then a name, not just a capital letter); stopwords never start one."""
    first, _, rest = name.partition(" ")
    at_start = start in sentence_starts or start == 0
    if first.lower() in _STOP_STARTS or (at_start and not re.search(rf"(?<=[a-z,;] ){re.escape(first)}\b", text)):
        return _ARTICLE_START.sub("", rest).strip()
    return name


_STOP_STARTS = frozenset("the a an it its this that these those he she they his her their in on at by for of and but or "
                         "when while after before during since as if there here what which who".split())


def candidates_of(chunk: Any, style: Style, per_chunk: int, seed: int, offset: int = 0) -> list[Candidate]:
    """Up to ``per_chunk`` candidates of a chunk from the ``offset``-th on: the best kind first, a
    seeded order within a kind (so pass ``p`` takes ``offset = p * per_chunk``)."""
    rng = random.Random(f"{seed}:candidates:{chunk.id}")
    found = candidate_answers(chunk.text, style)
    rank = {k: i for i, k in enumerate(["date", "number", "name", "phrase", "sentence"])}
    keyed = sorted(((rank[k], rng.random(), a, k) for a, k in found))
    return [Candidate(chunk.id, chunk.doc_id, chunk.text, a, k) for _, _, a, k in keyed[offset:offset + per_chunk]]


# ---------------------------------------------------------------------------------------------
# The rules writer: a wh-question in place of the answer
# ---------------------------------------------------------------------------------------------

RULES = "rules"
_PRONOUN_START = re.compile(r"^(?:it|he|she|they|this|these|those|that|its|his|her|their|such|both|however,? it)\b", re.IGNORECASE)
_YEAR = re.compile(r"1\d{3}|20\d{2}")
_PERCENT = re.compile(r"^\s*(?:%|per ?cent|percent)")
_COUNTED = re.compile(r"^\s+(?!(?:of|and|or|to|in|on|at|by|for|hundred|thousand|million|billion|trillion)\b)[a-z][a-z-]+")
_ARTICLE_END = re.compile(r"\b(?:the|a|an)\s+$", re.IGNORECASE)
_PARENS = re.compile(r"\s*[(\[][^)\]]*[)\]]")
_LIST_NEXT = re.compile(r"^\s*(?:,\s*[^,\s]+(?:\s+[^,\s]+)?\s*(?:,|\b(?:and|or)\b)|(?:,\s*)?(?:and|or)\b)")
_CONNECTIVE = re.compile(r"^(?:however|thus|instead|therefore|also|moreover|furthermore|in addition|indeed|meanwhile|consequently|"
                         r"nevertheless|finally|today|later|similarly|in contrast|for example|for instance),\s*", re.IGNORECASE)
MAX_QUESTION_WORDS = 32


class RulesWriter:
    """The default question writer: no model, :func:`rules_question` for every candidate."""

    name = RULES


def rules_question(c: Candidate) -> str:
    """The sentence holding the candidate with the answer replaced by a wh-phrase, as a question.

    "In early August, Montcalm led 7,000 troops to the fort." with answer "7,000" becomes
    "In early August, Montcalm led how many troops to the fort?". Years become "what year",
    percentages "what percentage", counted numbers "how many NOUN", a possessive name "whose", an
    answer that opens the sentence "What ...", anything else "what" in place (an echo question).
    '' (dropped as malformed) where the rewrite would be ambiguous or unreadable: the sentence
    starts with a pronoun (the question would not say what it is about), the answer is one item
    of a list, it occurs twice, the sentence is a quotation, or the question would be too long.
    """
    if c.kind == "sentence":
        return ""
    sentence = next((c.passage[s:e] for s, e in sentence_spans(c.passage) if c.answer in c.passage[s:e]), "")
    if not sentence or sentence.count(c.answer) != 1 or _PRONOUN_START.match(sentence) or '"' in sentence or "“" in sentence:
        return ""
    i = sentence.index(c.answer)
    pre, post = sentence[:i], sentence[i + len(c.answer):]
    if re.search(r"(?:,|\band|\bor)\s*$", pre) or _LIST_NEXT.match(post):
        return ""  # one item of a list: "on Tuesday, Wednesday and Thursday"
    if re.search(r"[-–/]$", pre) or re.match(r"^[-–/]", post) or re.search(r"\b(?:the|year|AD|BC)\s+$", pre, re.IGNORECASE) and _YEAR.fullmatch(c.answer):
        return ""  # a range or a year used as a word: "2013–2014", "the 2004 Treaty", "the year 2000"
    if c.kind in ("date", "number") and _YEAR.fullmatch(c.answer):
        wh = "what year"
    elif c.kind == "date":
        wh = "what date"
    elif c.kind == "number" and _PERCENT.match(post):
        wh, post = "what percentage", _PERCENT.sub("", post)
    elif c.kind == "number" and _COUNTED.match(post):
        wh = "how many"
    elif c.kind == "number":
        return ""  # a bare number out of context reads as noise ("AD what number")
    elif post.startswith(("'s", "’s")):
        wh, post = "whose", post[2:]
    else:
        wh = "what"
    pre = _ARTICLE_END.sub("", pre) if wh in ("what", "whose") else pre
    pre = _CONNECTIVE.sub("", pre)
    body = f"{pre}{wh}{post}"
    body = _PARENS.sub("", body).strip().rstrip(" .!?;:,")
    if not body or len(body.split()) > MAX_QUESTION_WORDS or not re.search(r"[a-z]{3}", post + pre):
        return ""
    return body[0].upper() + body[1:] + "?"


class Reader(Protocol):
    """Answers generated questions from their source chunk, for the round trip."""

    def answers(self, pairs: list[Pair], s: QuestionSettings) -> list[str]: ...


class TeacherReader:
    """A chat model (``hf:``, ``openai:``, ``fake``) answers with the chunk as its passage."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher

    def answers(self, pairs: list[Pair], s: QuestionSettings) -> list[str]:
        return chat_all(self.teacher, [answer_prompt(p.candidate, p.question, s.style) for p in pairs], s.batch_size,
                        s.max_new_tokens, "answering questions")


class AdapterReader:
    """A train-generator adapter reads the chunk as ``ask`` does (its prompt, one document) and
    gives its best answer with the abstention sentence ruled out (as when ``calibrate`` scores
    answers): the round trip asks what the answer is, and a tuned model that refuses too readily
    would otherwise drop good pairs. Free decoding: with grounded decoding the banned refusal
    left truncated spans ("The") where the model wanted to refuse."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def answers(self, pairs: list[Pair], s: QuestionSettings) -> list[str]:
        from tqdm.auto import tqdm

        out: list[str] = []
        with tqdm(total=len(pairs), desc="answering questions", unit="question", disable=None) as bar:
            for start in range(0, len(pairs), s.batch_size):
                batch = pairs[start:start + s.batch_size]
                contexts = [[{"id": p.candidate.chunk_id, "doc_id": p.candidate.doc_id, "title": "", "text": p.candidate.passage}] for p in batch]
                for a in self.pipeline.answer_batch([p.question for p in batch], contexts=contexts, margins=True):
                    out.append("" if is_abstention(a.raw) else extract_answer(a.raw))
                bar.update(len(batch))
        return out


def as_reader(reader: Any) -> Reader:
    """A chat model (anything with ``chat_batch``) wrapped in :class:`TeacherReader`; a :class:`Reader` as is."""
    if isinstance(reader, RulesWriter):
        raise ConfigError("the rules writer cannot answer questions: give the round trip a reader (--question-reader adapter:DIR or hf:MODEL)")
    return TeacherReader(reader) if hasattr(reader, "chat_batch") else reader


# ---------------------------------------------------------------------------------------------
# Model calls
# ---------------------------------------------------------------------------------------------


def chat_all(model: Any, conversations: list[list[dict[str, str]]], batch_size: int, max_new_tokens: int, desc: str) -> list[str]:
    """The model's replies to every conversation, ``batch_size`` at a time, with a progress bar."""
    from tqdm.auto import tqdm

    out: list[str] = []
    with tqdm(total=len(conversations), desc=desc, unit="prompt", disable=None) as bar:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            out += model.chat_batch(batch, max_new_tokens=max_new_tokens)
            bar.update(len(batch))
    return out


def question_prompt(c: Candidate) -> list[dict[str, str]]:
    return [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": QUESTION_USER.format(passage=c.passage, answer=c.answer)}]


def answer_prompt(c: Candidate, question: str, style: Style) -> list[dict[str, str]]:
    return [{"role": "system", "content": ANSWER_SYSTEM[style]}, {"role": "user", "content": ANSWER_USER.format(passage=c.passage, question=question)}]


_PREFIX = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s*|(?:q(?:uestion)?\s*\d*\s*[:.-])\s*)+", re.IGNORECASE)


def parse_question(reply: str) -> str:
    """The question in a model's reply: its first line with text, list and "Question:" prefixes and
    quotes removed, cut after the first "?" (one added to a question without one); '' for none."""
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip("\"'“”‘’").strip()
    if "?" in line:
        line = line[: line.index("?") + 1]
    elif line:
        line = line.rstrip(".!:;,") + "?"
    return line if len(line.split()) >= 3 else ""


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


def leaks_answer(question: str, answer: str, style: Style) -> bool:
    """Whether a question gives its answer away: holds a span answer verbatim, or most of a sentence answer."""
    if style == "span":
        return contains_answer(question, [answer])
    need = content_tokens(answer)
    return bool(need) and len(need & content_tokens(question)) / len(need) >= 0.8


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


_ENTITY = re.compile(r"(?<=\s)[A-Z][\w'’-]*|\b\w*\d\w*")


def question_key(question: str) -> tuple[frozenset[str], frozenset[str]]:
    """(names and numbers, content words) of a question: two questions are near-duplicates when
    they name the same things and share most content words (:func:`is_duplicate`)."""
    return frozenset(m.lower() for m in _ENTITY.findall(question)), content_tokens(question)


def is_duplicate(key: tuple[frozenset[str], frozenset[str]], kept: list[tuple[frozenset[str], frozenset[str]]], threshold: float) -> bool:
    """Whether a question (its :func:`question_key`) repeats a kept one: the same names and numbers
    (so "... of Alpha3?" and "... of Alpha4?" stay two questions) and content-word Jaccard >= ``threshold``."""
    return any(key[0] == k[0] and _jaccard(key[1], k[1]) >= threshold for k in kept)


def round_trip(pairs: list[Pair], retriever: Any, reader: Any, s: QuestionSettings, kept_keys: list[tuple[frozenset[str], frozenset[str]]]) -> None:
    """Run the filters on a round of pairs in place (``dropped`` set on the ones that fail).

    ``reader``: a :class:`Reader`, or a chat model that answers from the chunk (:func:`as_reader`)."""
    live = [p for p in pairs if p.dropped is None]
    hits = retriever.search_batch([p.question for p in live], s.top_k, s.hybrid) if live else []
    for p, h in zip(live, hits):
        p.rank = next((x.rank for x in h if x.chunk.id == p.candidate.chunk_id), None)
        if p.rank is None:
            p.dropped = "retrieval"
    live = [p for p in live if p.dropped is None]
    read = [p for p in live if p.form == "span"]  # yes/no and unanswerable pairs are true or false by construction
    replies = as_reader(reader).answers(read, s) if read else []
    for p, reply in zip(read, replies):
        p.reply = reply.strip()
        p.f1 = f1(p.reply, [p.candidate.answer])
        if p.f1 < s.min_f1:
            p.dropped = "answer_mismatch"
    for p in live:
        if p.dropped is None:
            key = question_key(p.question)
            if is_duplicate(key, kept_keys, s.duplicate_jaccard):
                p.dropped = "duplicate"
            else:
                kept_keys.append(key)


def write_questions(candidates: list[Candidate], writer: Any, s: QuestionSettings) -> list[Pair]:
    """A question per candidate from the writer (:class:`RulesWriter` or a chat model); unusable
    ones are dropped as ``malformed`` or ``leaks_answer``."""
    if isinstance(writer, RulesWriter):
        questions = [rules_question(c) for c in candidates]
    else:
        replies = chat_all(writer, [question_prompt(c) for c in candidates], s.batch_size, s.max_new_tokens, "writing questions")
        questions = [parse_question(r) for r in replies]
    pairs = []
    for c, q in zip(candidates, questions):
        pairs.append(Pair(c, q, dropped="malformed" if not q else "leaks_answer" if leaks_answer(q, c.answer, s.style) else None))
    return pairs


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------


def generate(retriever: Any, writer: Any, s: QuestionSettings, reader: Any = None) -> Result:
    """``s.n`` QA pairs from the retriever's chunks, written by ``writer`` (:class:`RulesWriter`
    or a chat model with ``chat_batch``) and kept by the round trip (module docstring), whose
    answers come from ``reader`` (default: the writer's model).

    Raises:
        InputError: no chunk yields a candidate answer, or no pair survives the filters.
    """
    counts: Counter = Counter()
    stream = candidate_stream(retriever.store, s, counts)
    kept: list[Pair] = []
    dropped: list[Pair] = []
    kept_keys: list[tuple[frozenset[str], frozenset[str]]] = []
    quota = form_quota(s)
    for _ in range(s.max_rounds):
        written = counts["written"]
        # Ask for enough to fill the rest at the keep rate seen so far (at least twice what is missing).
        rate = len(kept) / written if written else 0.5
        want = math.ceil((quota["span"] - len(kept)) / max(rate, 0.05) * 1.2) if written else 2 * quota["span"]
        candidates = list(itertools.islice(stream, want))
        if not candidates:
            break
        counts["written"] += len(candidates)
        pairs = write_questions(candidates, writer, s)
        round_trip(pairs, retriever, writer if reader is None else reader, s, kept_keys)
        kept += [p for p in pairs if p.dropped is None]
        dropped += [p for p in pairs if p.dropped is not None]
        if len(kept) >= quota["span"]:
            break
    surplus = kept[quota["span"]:]
    kept = kept[: quota["span"]]
    if quota["span"] < s.n:
        # the span questions may have used every candidate (a small corpus asked for many questions): the rule-written
        # forms then read the chunks again, so that their shares hold whatever the corpus's size
        again = candidate_stream(retriever.store, s, Counter())
        more, lost = write_forms(itertools.chain(stream, again), quota, retriever, s, kept_keys, counts)
        kept, dropped = kept + more, dropped + lost
    report = {"requested": s.n, "chunks_sampled": counts["chunks"], "chunks_without_candidates": counts["no_candidate"],
              "written": counts["written"], "kept": len(kept), "unused_surplus": len(surplus),
              "dropped": {f: sum(p.dropped == f for p in dropped) for f in FILTERS}}
    if quota["span"] < s.n:
        report["forms"] = {f: sum(p.form == f for p in kept) for f in FORMS}
    if not kept:
        raise InputError(f"no generated question survived the filters ({_describe(report)}): try another --question-generator or "
                         "--question-reader, "
                         "a lower --question-min-f1 or a higher --question-top-k")
    if len(kept) < s.n:
        why = "the chunks' candidate answers ran out" if counts["exhausted"] else f"{s.max_rounds} rounds of writing ran out"
        log.warning("generated %d of the %d questions asked for: %s (%s)", len(kept), s.n, why, _describe(report))
    return Result([p.to_item() for p in kept], report, kept, dropped)


def form_quota(s: QuestionSettings) -> dict[str, int]:
    """How many of ``s.n`` questions each form gets: yes and no split the yes/no share, the
    unanswerable share is rounded, and span questions take the rest."""
    yes_no = round(s.n * s.yes_no)
    out = {"yes": (yes_no + 1) // 2, "no": yes_no // 2, "unanswerable": round(s.n * s.unanswerable)}
    return {"span": s.n - sum(out.values()), **out}


def write_forms(stream: Iterator[Candidate], quota: dict[str, int], retriever: Any, s: QuestionSettings,
                kept_keys: list[tuple[frozenset[str], frozenset[str]]], counts: Counter) -> tuple[list[Pair], list[Pair]]:
    """Yes/no and unanswerable pairs (:func:`write_yes_no`, :func:`write_unanswerable`) from the
    next candidates of ``stream``, each candidate given the form that most lacks pairs, until
    every quota is met or the rounds run out; the retrieval and duplicate filters apply (the
    source chunk must rank in the top ``top_k``, so that an unanswerable question sits beside the
    passage it seems to be about). Returns (kept, dropped)."""
    rng = random.Random(f"{s.seed}:forms")
    pool = EntityPool.from_chunks(sample_chunks(retriever.store, s.seed, s.docs))
    need = {f: quota[f] for f in FORMS[1:]}
    kept: list[Pair] = []
    dropped: list[Pair] = []
    for _ in range(s.max_rounds):
        if not any(need.values()):
            break
        candidates = list(itertools.islice(stream, 3 * sum(need.values())))
        if not candidates:
            break
        counts["written"] += len(candidates)
        pairs, planned = [], dict(need)
        for c in candidates:
            form = max(FORMS[1:], key=lambda f: planned[f])  # ties: yes, no, unanswerable in that order
            planned[form] = max(planned[form] - 1, 0)
            if form == "unanswerable":
                question, answer = write_unanswerable(c, pool, rng), ""
            else:
                question, answer = write_yes_no(c, pool, form, rng, s.yes_no_form, s.no_swap)
            pairs.append(Pair(c, question, form=form, answer=answer, dropped=None if question else "malformed"))
        round_trip(pairs, retriever, None, s, kept_keys)
        for p in pairs:
            if p.dropped is None and need[p.form] > 0:
                need[p.form] -= 1
                kept.append(p)
            elif p.dropped is not None:
                dropped.append(p)
    return kept, dropped


def candidate_stream(store: Any, s: QuestionSettings, counts: Counter) -> Iterator[Candidate]:
    """Candidates in passes over the sampled chunks (:func:`sample_chunks`): ``per_chunk`` of each
    chunk per pass, the next ones on the next pass, until a pass finds none (``counts["exhausted"]``)."""
    for p in itertools.count():
        found_any = False
        for chunk in sample_chunks(store, s.seed, s.docs):
            found = candidates_of(chunk, s.style, s.per_chunk, s.seed, offset=p * s.per_chunk)
            if p == 0:
                counts["chunks"] += 1
                counts["no_candidate"] += not found
            found_any = found_any or bool(found)
            yield from found
        if not found_any:
            counts["exhausted"] = 1
            return


def _describe(report: dict) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in report["dropped"].items() if v)
    return f"{report['written']} written from {report['chunks_sampled']} chunks, {report['kept']} kept" + (f"; dropped: {drops}" if drops else "")


def summary_line(report: dict) -> str:
    """One line for the end of a build: written, kept, dropped by each filter."""
    return "generated questions: " + _describe(report) + (f"; {report['unused_surplus']} surplus unused" if report["unused_surplus"] else "")


# ---------------------------------------------------------------------------------------------
# Yes/no and unanswerable questions, written by rule (no model)
# ---------------------------------------------------------------------------------------------

# The forms a written question can take; "span" is the wh-question above.
FORMS = ("span", "yes", "no", "unanswerable")
SWAP_KINDS = ("date", "number", "name")
_DETERMINERS = frozenset("the a an this that these those its their his her our".split())  # a subject starts so, or is a name
_AUX = re.compile(r"^(?P<subj>[A-Z][^,;:]{1,60}?)\s+(?P<aux>is|are|was|were|has|have|had|can|could|will|would)\s+(?P<rest>\S.*)$")


@dataclass(frozen=True)
class EntityPool:
    """Answers of each kind seen across the corpus (:data:`SWAP_KINDS`), for swapping one into a
    sentence or question: a date for a date, a year for a year, a name for a name."""

    by_kind: dict[str, tuple[str, ...]]

    @classmethod
    def from_chunks(cls, chunks: Any, limit: int = 2000) -> EntityPool:
        """The pool of up to ``limit`` chunks' candidates (in the order given: pass :func:`sample_chunks`)."""
        found: dict[str, set[str]] = {k: set() for k in SWAP_KINDS + ("year",)}
        for chunk in itertools.islice(chunks, limit):
            for answer, kind in candidate_answers(chunk.text):
                if kind in SWAP_KINDS:
                    found["year" if _YEAR.fullmatch(answer) else kind].add(answer)
        return cls({k: tuple(sorted(v)) for k, v in found.items()})

    def swap(self, answer: str, kind: str, avoid: str, rng: random.Random) -> str | None:
        """Another answer of the same kind (:func:`same_kind`) that ``avoid`` (the source passage)
        does not mention; None when the pool has none."""
        key = swap_key(answer, kind)
        options = [a for a in self.by_kind.get(key, ()) if a != answer and a not in avoid and same_kind(answer, key, a, key)]
        return rng.choice(options) if options else None


def swap_key(answer: str, kind: str) -> str:
    """The pool an answer swaps within: "year" for a bare year, else its kind."""
    return "year" if _YEAR.fullmatch(answer) else kind


def same_kind(answer: str, key: str, other: str, other_key: str) -> bool:
    """Whether ``other`` can stand in for ``answer``: the same pool (a year for a year), and a name
    of as many words."""
    return other_key == key and (key != "name" or len(other.split()) == len(answer.split()))


def _whole(phrase: str) -> re.Pattern[str]:
    """``phrase`` as whole words ("7" does not match inside "17 houses" or "O2" inside "CO2")."""
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)")


def _mentions(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` as whole words (:func:`_whole`)."""
    return _whole(phrase).search(text) is not None


def passage_swap(answer: str, kind: str, passage: str, sentence: str, rng: random.Random) -> str | None:
    """Another answer of the same kind (:func:`same_kind`) that the same ``passage`` mentions
    outside ``sentence`` (the whole sentence the fact is in, its parentheses too), neither holding
    the other as whole words ("1889" and "March 1889"), and for a name sharing no word with it
    ("Eiffel" and "Eiffel Tower"); None when the passage has none. A "no" question made with it
    holds only the passage's own words, so it is told from a "yes" one by what the passage says,
    not by a word it lacks."""
    key = swap_key(answer, kind)
    taken = set(words(answer))
    options = []
    for other, other_kind in candidate_answers(passage):
        if (other_kind in SWAP_KINDS and same_kind(answer, key, other, swap_key(other, other_kind)) and not _mentions(sentence, other)
                and not _mentions(other, answer) and not _mentions(answer, other) and (key != "name" or not taken & set(words(other)))):
            options.append(other)
    return rng.choice(options) if options else None


def source_sentence(c: Candidate) -> tuple[int, str]:
    """(start, text) of the passage's first sentence holding the candidate's answer; (0, '') when none does."""
    return next(((s, c.passage[s:e]) for s, e in sentence_spans(c.passage) if c.answer in c.passage[s:e]), (0, ""))


def statement(c: Candidate) -> str | None:
    """The sentence holding the candidate, as a plain statement (no connective, no parentheses, no
    final stop); None where :func:`rules_question` would refuse it (a pronoun start, a quotation,
    the answer twice), the sentence is longer than a question may be, or it does not open with a
    letter, a digit or a currency sign."""
    start, sentence = source_sentence(c)
    if not sentence or sentence.count(c.answer) != 1 or _PRONOUN_START.match(sentence) or '"' in sentence or "“" in sentence:
        return None
    if _ABBREVIATION_END.search(c.passage[:start].rstrip().rstrip(".")):
        return None  # the splitter cut after "J." or "St.": this is half a sentence
    body = _PARENS.sub("", _CONNECTIVE.sub("", sentence.strip())).strip().rstrip(" .!?;:,")
    if not (body[:1].isalnum() or body[:1] in "$£€"):
        return None  # ", about a third ...", ".25 its packet IDs", "<Uyless Black ...": cut inside a sentence or a reference list
    if c.answer not in body or not 4 <= len(body.split()) <= MAX_QUESTION_WORDS - 4 or not readable(body):
        return None
    words_ = body.split()
    first, second = words_[0], words_[1]
    if first[1:].islower() and (first.lower() in STOPWORDS or (  # "The", "In": lowered; "EU", "McDonald", "Robert Oppenheimer" stay
            not second[:1].isupper() and not re.search(rf"(?<=[a-z,;] ){re.escape(first)}\b", c.passage))):  # capital only as the start
        body = first.lower() + body[len(first):]
    return body


_ABBREVIATION_END = re.compile(r"(?:\b[A-Z][a-z]{0,2}|\b\w\.\w(?:\.\w)*)$")  # "St", "Dr", "a.k.a": the splitter cut a sentence


def readable(text: str) -> bool:
    """Whether a statement or question reads as one: brackets and quotes balanced, not cut after an abbreviation."""
    pairs = (("(", ")"), ("[", "]"))
    return all(text.count(a) == text.count(b) for a, b in pairs) and not _ABBREVIATION_END.search(text.rstrip("?"))


def yes_no_question(body: str) -> str:
    """A statement as a yes/no question: the auxiliary moved to the front where the subject is a
    short phrase ("The tower was built in 1889" -> "Was the tower built in 1889?"), else "Is it
    true that ...?"."""
    m = _AUX.match(body[0].upper() + body[1:])
    if m and len(m["subj"].split()) <= 6 and (body[0].isupper() or m["subj"].split()[0].lower() in _DETERMINERS):
        subj = body[: len(m["subj"])]
        return f"{m['aux'].capitalize()} {subj} {m['rest']}?"
    return f"Is it true that {body}?"


# The short form of a yes/no question, as people ask them ("Did Eiffel design the tower?"): one clause, the
# sentence's tail after the fact dropped, a simple past verb asked with "did" in its base form (so the question's
# verb is not the passage's word, as in questions people write).
_LEAD = re.compile(r"^(?P<lead>(?:in|on|at|by|during|after|before|since|from|until|around)\s[^,]{1,40}),\s*(?P<main>.+)$", re.IGNORECASE)
_CLAUSE_END = re.compile(r"\s*(?:[,;:](?=\s|$)|\s(?:and|but|which|who|whom|whose|where|while|whereas|although|though|because|"
                         r"when|so that|after|before|until|since)\s)")
_PREPOSITION = re.compile(r"\s(?:for|in|on|at|by|with|from|during|after|before|since|under|over|into|through|against|"
                          r"within|among|between|near|across|via|as)\s")
_NOT_A_VERB_AFTER = re.compile(r"^(?:the|a|an|this|that|these|those|its|their|his|her|our|\w+ly)$", re.IGNORECASE)


def past_base(word: str) -> str | None:
    """The base form of a simple past verb ("designed" -> "design", "created" -> "create", "won" -> "win"); None
    where ``word`` is not one, or may as well be a noun or adjective ("left", "rose", "record"), or a form of "be"
    or "have" (those are asked by moving them to the front)."""
    import lemminflect

    if not word.isalpha() or not word.islower() or word in ("was", "were", "had"):
        return None
    readings = lemminflect.getAllLemmas(word)
    bases = readings.get("VERB", ())
    if len(bases) != 1 or set(readings) - {"VERB", "ADJ"}:
        return None
    base = bases[0]
    return base if word in lemminflect.getInflection(base, tag="VBD") else None


def clause_parts(body: str) -> tuple[str, str, str] | None:
    """(subject, question opening, rest) of a statement whose short subject (at most 8 words, a name, noun or
    determiner first) is followed by its first verb: an auxiliary ("Was", the rest after it), "has"/"had" as
    the main verb ("Did ... have"), or a simple past ("Did", the rest from the verb's base form); None for any
    other statement."""
    words = body.split(" ")
    if len(words) < 2:
        return None
    m = _AUX.match(body[0].upper() + body[1:])
    aux_at = len(m["subj"].split()) if m else len(words)
    past_at = next((i for i in range(1, min(len(words) - 1, 9, aux_at)) if past_base(words[i])
                    and not _NOT_A_VERB_AFTER.match(words[i - 1]) and all(w.strip(",;:") == w for w in words[:i])), None)
    if past_at is not None:
        at, opening, rest = past_at, "Did", " ".join([past_base(words[past_at]) or ""] + words[past_at + 1:])
    elif m:
        at, opening, rest = aux_at, m["aux"].capitalize(), m["rest"]
        following = rest.split(" ")[0]
        if m["aux"] in ("has", "have", "had") and not following.endswith(("ed", "en")) and following not in _PARTICIPLES:
            opening, rest = {"has": "Does", "have": "Do", "had": "Did"}[m["aux"]], f"have {rest}"  # "had 500 employees"
    else:
        return None
    first, last = words[0].lower(), words[at - 1].lower()
    if at > 8 or not (body[0].isupper() or first in _DETERMINERS or first not in STOPWORDS) or last in ("and", "but", "or"):
        return None  # a subject of at most 8 words opening with a name, a noun ("france", lowered by statement) or a determiner,
        # not a clause joined to the verb ("the tower stands tall and | was finished")
    return " ".join(words[:at]), opening, rest


_PARTICIPLES = frozenset("been had done made built won led held found left lost sold told taught brought bought thought "
                         "kept met paid sent spent stood understood become come run begun".split())


def short_statement(body: str, answer: str) -> str:
    """``body`` (a :func:`statement`) cut to the clause that holds ``answer``: a short leading phrase ("In 1889,
    ...") put after its clause when it holds the answer, else dropped; the words after the answer's clause
    (from a comma, "and", "which", ...) dropped; and after a fact that follows the verb, a phrase after it
    without a number ("was completed in 1889 for the fair" -> "was completed in 1889", not "... 5,000 in 1900")."""
    lead = _LEAD.match(body)
    if lead and len(lead["lead"].split()) <= 5:
        main, phrase = lead["main"], lead["lead"]
        if answer in phrase and answer not in main:
            cut = _CLAUSE_END.search(main)
            return f"{main[: cut.start()] if cut else main} {phrase[0].lower()}{phrase[1:]}".strip()
        body = main
    at = body.find(answer)
    if at < 0:
        return body
    end = at + len(answer)
    cut = _CLAUSE_END.search(body, end)
    if cut and cut.group().strip() == "and" and re.search(r"\bbetween\s+$", body[:at]):
        cut = _CLAUSE_END.search(body, cut.end())  # "between 1804 and 1815": the range stays whole
    body = body[: cut.start()] if cut else body
    parts = clause_parts(body)
    after = _PREPOSITION.search(body, end)
    if parts and at >= len(parts[0]) and after and not re.search(r"\d", body[after.start():]):
        body = body[: after.start()]  # the fact follows the verb: the phrase after it goes, unless it holds a number
    return body.strip()


def short_yes_no_question(body: str) -> str | None:
    """A :func:`short_statement` as a yes/no question: the auxiliary moved to the front ("Was the tower
    completed in 1889?") or a simple past verb asked with "did" ("Eiffel designed the tower" -> "Did
    Eiffel design the tower?"); None where :func:`clause_parts` finds neither."""
    parts = clause_parts(body)
    if parts is None:
        return None
    subj, opening, rest = parts
    return f"{opening} {subj} {rest}?"


def write_yes_no(c: Candidate, pool: EntityPool, polarity: str, rng: random.Random, form: YesNoForm = "sentence",
                 swap: NoSwap = "corpus") -> tuple[str, str]:
    """(question, answer) for a "yes" question (the candidate's sentence, faithful) or a "no" one
    (the same sentence with the candidate swapped for another of its kind: from the corpus, one
    the passage does not mention, or with ``swap`` "passage" one the same passage mentions
    elsewhere, :func:`passage_swap`); ('', '') when the sentence or a swap is unusable. ``form``
    "short": the sentence's clause that holds the fact (:func:`short_statement`) asked as people
    ask (:func:`short_yes_no_question`), the whole sentence where that finds no short question."""
    body = statement(c)
    fact = _whole(c.answer)
    if body is None or c.kind not in SWAP_KINDS or not fact.search(body):
        return "", ""  # also the answer lowered as the sentence's first word, or only inside a word ("2" of "O2"): none to swap
    short = False
    if form == "short":
        cut = short_statement(body, c.answer)
        short = fact.search(cut) is not None and len(cut.split()) >= 3 and short_yes_no_question(cut) is not None
        body = cut if short else body
    if polarity == "no":
        other = (passage_swap(c.answer, c.kind, c.passage, source_sentence(c)[1], rng) if swap == "passage"
                 else pool.swap(c.answer, c.kind, c.passage, rng))
        if other is None:
            return "", ""
        body = fact.sub(lambda _: other, body, count=1)
    asked = short_yes_no_question(body) if short else None
    return asked or yes_no_question(body), polarity.capitalize()


def write_unanswerable(c: Candidate, pool: EntityPool, rng: random.Random) -> str:
    """A question the passage no longer answers, as SQuAD 2.0's were written: the candidate's
    wh-question (:func:`rules_question`) with a name, date or number that anchors it in the passage
    swapped for another of its kind from the corpus that the passage does not mention ("In early
    August, Montcalm led how many troops ...?" -> "In early August, Wolfe led how many troops
    ...?"); '' when there is no such question or anchor."""
    question = rules_question(c)
    if not question or not readable(question):
        return ""
    for anchor, kind in candidate_answers(question):
        if kind in SWAP_KINDS and anchor in c.passage and not anchor.lower().startswith(("what", "how", "whose")):
            other = pool.swap(anchor, kind, c.passage, rng)
            if other is not None:
                return question.replace(anchor, other, 1)
    return ""
