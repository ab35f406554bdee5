"""``build-raft-dataset``: RAFT training data from an index and QA pairs.

Each question gets its oracle chunk (the chunk that supports the answer,
:func:`rag_pipeline.passage.gold_passage`) and N distractors (hard negatives from the
retriever's top results mixed with random chunks, none supporting the answer), the oracle kept
with probability P, in shuffled order, fitted to the generator's token budget, with a target
in the chosen answer style (RAFT, Zhang et al. 2024; gorilla/raft ``raft.py``).

Questions come from QA files in any format :mod:`rag_pipeline.qa` reads; records that carry
their own passage need no index (:mod:`rag_pipeline.data.contexts` indexes the passages); with no
QA file at all, :mod:`rag_pipeline.data.questions` writes them from the index's chunks. Answers may
be spans or free-form text (:func:`rag_pipeline.support.answer_form` tells which a QA set holds).

Reads an index directory and QA files; writes ``OUTPUT/`` atomically::

    dataset/            datasets.DatasetDict (train, validation, test), save_to_disk
    jsonl/{split}.jsonl the same rows as JSON lines
    exports/{format}/{split}.jsonl   chat | completion | raft | eval
    manifest.json       template (name and text), seed, params, index, tokenizer, counts, fingerprint
    index/              the index of the QA file's contexts, when it was built here
    questions/          generated questions: kept.jsonl, dropped.jsonl (with the filter that dropped each)
    skipped.jsonl       the questions left out, each with its reason (only when some were)

A record that carries its own context always gets an oracle from it: the chunk that best
supports its answer, whatever the answer's wording (:func:`find_oracle`).

Every random choice of an example comes from ``random.Random(f"{seed}:{question id}")``, so the
output is byte-identical for the same inputs and seed and does not depend on batch order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline import prompt as P
from rag_pipeline.answer import structured
from rag_pipeline.answer.ask import Pipeline
from rag_pipeline.answer.settings import AnswerSettings
from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, output_lock, prepare_target, staging_dir, write_json, write_jsonl
from rag_pipeline.config import opt, to_dict
from rag_pipeline.data.contexts import Context, attach_context_docs, context_doc_id, distinct_contexts, match_contexts
from rag_pipeline.data.injection import STYLES, TRAIN_PAYLOADS, inject
from rag_pipeline.data.questions import RULES, AdapterReader, NoSwap, QuestionSettings, RulesWriter, YesNoForm, summary_line
from rag_pipeline.data.questions import generate as generate_questions
from rag_pipeline.data import tasks
from rag_pipeline.data.splits import ensure_train, train_warning
from rag_pipeline.data.teacher import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, TeacherOptions, load_teacher, write_cot
from rag_pipeline.device import check_device
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.generator import load_tokenizer as load_generator_tokenizer
from rag_pipeline.index.build import IndexConfig, build_index
from rag_pipeline.index.ingest import normalize_whitespace
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.model_paths import MINILM_ID, REFERENCE_ADAPTER, SMOLLM2_ID, resolve_model
from rag_pipeline.passage import Passage, document, from_chunk, gold_passage, hard_distractors, holds_answer, usable_distractor
from rag_pipeline.qa import QAFieldConfig, QAItem, load_qa, require_answers
from rag_pipeline.support import answer_form, context_support, support
from rag_pipeline.textnorm import contains_answer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_OF_STEM = {"train": "train", "dev": "validation", "validation": "validation", "val": "validation", "test": "test"}
FORMATS = ("chat", "completion", "raft", "eval")
COLUMNS = ("id", "question", "documents", "oracle_position", "prompt", "completion", "answer", "answerable", "doc_id")

SKIPPED_FILE = "skipped.jsonl"  # the questions left out, with their reasons; not part of the dataset's fingerprint
CONTEXTS_SOURCE = "contexts.jsonl"  # the ``source`` of every chunk of an index made from contexts (what ``ask`` shows as the file)
# The output directory build-raft-dataset may replace: its own manifest and folders, nothing else.
ARTIFACT = Artifact("a RAFT dataset", "manifest.json", "raft-dataset",
                    allowed=frozenset({"manifest.json", "dataset", "jsonl", "exports", "index", "questions", SKIPPED_FILE}))


@dataclass
class RaftConfig(QAFieldConfig):
    """Settings of ``build-raft-dataset``; all of them are recorded in the output's manifest."""

    index: str = opt("", "index directory (from build-index); '' with a QA file whose records carry a context: the contexts "
                         "are indexed into OUTPUT/index (also when --index names a path that does not exist yet)")
    qa: list[str] = opt(factory=list, help="QA files (JSONL, JSON, CSV/TSV, Parquet, datasets folder); named train/dev/validation/test "
                                           "keep that split (a DatasetDict folder: its splits), else split by --split-ratio")
    qa_dir: str = opt("", "folder holding train.jsonl, dev.jsonl (-> validation) and test.jsonl: use the corpus's own split")
    output: str = opt("runs/raft", "output directory (replaced atomically)")
    embedder: str = opt("", "embedder the index must have been built with ('' = whatever the index records); when the contexts "
                            "are indexed here, the embedder to index them with ('' = all-MiniLM-L6-v2)")
    num_distractors: int = opt(3, "distractor documents per example (RAFT's default, 4 documents in all)")
    hard_negative_ratio: float = opt(0.5, "share of distractors taken from the retriever's top hits (rest random): "
                                          "hard ones teach ignoring near misses, random ones keep topical variety")
    top_k: int = opt(20, "retrieval depth per question for the oracle search and the hard negatives")
    hybrid: bool = opt(True, "retrieve with dense + BM25 fused by reciprocal rank (as ask and evaluate do): harder, "
                             "lexically close distractors; --no-hybrid for dense only")
    injection_rate: float = opt(0.0, "share of examples given a prompt-injection document (rag_pipeline.data.injection: plain, "
                                     "forged delimiter, many-shot, hidden; training payloads, never evaluate's) with the normal "
                                     "target, so the adapter learns to ignore instructions inside documents")
    p_oracle: float = opt(0.8, "probability that the oracle stays in the context (RAFT's P; 0.8 works best in the paper)")
    no_oracle_target: Literal["abstain", "answer"] = opt("abstain", "target when the oracle is left out: abstain (matches the "
                                                                 "template's instruction; test paragraphs are unseen, so answering from memory "
                                                                 "teaches guessing) or answer (RAFT's choice, for closed domains)")
    missing_oracle: Literal["skip", "keep"] = opt("skip", "answerable questions whose answer is in no chunk: skip (likely label noise) "
                                                        "or keep as no-oracle examples")
    answer_form: Literal["auto", "span", "free-form"] = opt("auto", "span: answers occur verbatim in their passage (oracle and distractors "
                                                                    "judged by whole-word containment); free-form: they need not (judged by "
                                                                    "content-token recall too); auto: span when 80 percent of answers with a known "
                                                                    "passage occur in it verbatim")
    min_support: float = opt(0.5, "free-form answers: content-token recall a chunk needs to be the oracle (of a doc_id document, or a "
                                  "retrieved one), and above which a long answer's chunk may not be a distractor")
    task: str = opt("qa", "qa (a short cited answer), summary (a query-focused summary citing the oracle), extract (a JSON object "
                          "copied from the oracle, nulls without it), or a mixture by weights: qa=0.6,summary=0.2,extract=0.2 "
                          "(rag_pipeline.data.tasks)")
    schema: str = opt("", "JSON schema file for extract examples written from the records' own 'extract' objects; empty = "
                          "inferred from up to 200 of them (stored as extract_schema in the manifest and the trained adapter, "
                          "which ask --task extract then answers under); records without one get the rule-written answer/quote target")
    share_context: int = opt(1, "training questions with the same oracle passage shown the same passages in the same "
                                "order, the first one's, where no other passage holds their answer; train-generator "
                                "--pack-shared then reads those passages once for all of them (8 on the bundled corpus: "
                                "4x fewer tokens a training epoch); 1 = each question draws its own")
    answer_style: Literal["short", "cited", "cot"] = opt("cited", "target: short = answer; cited = 'answer [n]' (the template "
                                                                 "asks for citations); cot = quoted oracle sentence + <ANSWER>:")
    template: str = opt(P.DEFAULT_TEMPLATE, "prompt template name (prompt.TEMPLATES)")
    generator: str = opt(SMOLLM2_ID, "generator whose tokenizer measures the token budget")
    max_prompt_tokens: int = opt(1024, "budget for prompt + target tokens of the generator (4 paragraphs of ~170 tokens fit)")
    format: list[str] = opt(factory=lambda: ["chat", "completion", "eval"], help=f"exports beside the dataset: {', '.join(FORMATS)}")
    split_ratio: list[float] = opt(factory=lambda: [0.8, 0.1, 0.1], help="train,validation,test shares when the QA files carry no split (grouped by document)")
    seed: int = opt(0, "seed of every random choice")
    batch_size: int = opt(2048, "questions embedded and searched per batch; large, so torch and the tokenizer's thread pools alternate rarely (they contend on few cores)")
    teacher: str = opt("", "cot reasoning writer: '' = deterministic quote; fake | hf:MODEL | openai:URL#MODEL")
    generate_questions: int = opt(0, "question/answer pairs to write from the index's chunks (rag_pipeline.data.questions) and build "
                                     "examples from; with QA files too, written from the documents of their train split only (all "
                                     "of them when no file names a split) and added to train, so no held-out document is seen")
    question_yes_no: float = opt(0.0, "share of the generated questions written as yes/no questions: half 'Yes' (a sentence of the "
                                      "chunk, faithful) and half 'No' (the same with a date, number or name swapped for another "
                                      "from the corpus)")
    question_yes_no_form: YesNoForm = opt("sentence", "how a yes/no question is written: sentence = the whole sentence as a "
                                                      "question; short = the clause holding the fact, a simple past asked with "
                                                      "'did' ('Did Eiffel design the tower?')")
    question_no_swap: NoSwap = opt("corpus", "where a 'No' question's swapped date, number or name comes from: corpus = one the "
                                             "passage does not mention; passage = one the same passage mentions elsewhere, so that "
                                             "the question holds only the passage's words")
    question_unanswerable: float = opt(0.0, "share written as unanswerable questions (a wh-question whose anchor name, date or "
                                            "number is swapped for one the passage lacks), with the abstention as target: "
                                            "documents-only data that teaches abstention")
    question_generator: str = opt("rules", "writes the generated questions: rules = the sentence holding the answer rewritten as a "
                                           "wh-question (no model, the default); hf:PATH_OR_ID | openai:URL#MODEL | fake")
    question_reader: str = opt("", "answers them from their chunk for the round trip: adapter:DIR = a train-generator output "
                                   "(its best non-abstaining answer); or hf:PATH_OR_ID | openai:URL#MODEL | fake; '' = the writer's model, or "
                                   f"adapter:{REFERENCE_ADAPTER} for rules")
    question_style: Literal["span", "sentence"] = opt("span", "generated answers: span = dates, numbers, names, noun phrases of a chunk; "
                                                            "sentence = one of its sentences (free-form style)")
    question_top_k: int = opt(5, "a generated question is kept only if the retriever ranks its source chunk this high")
    question_min_f1: float = opt(0.5, "... and only if the question reader, shown the chunk, answers it with this token F1 against the answer")
    request_timeout: float = opt(60.0, "openai: teachers and question writers: seconds per request")
    request_retries: int = opt(3, "openai: attempts per request (timeouts, 5xx, malformed replies) before a one-line error")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to embed the questions (and run an hf: teacher or question writer)")
    json: bool = opt(False, "print the result (manifest, skipped question ids) as JSON instead of the table")

    def __post_init__(self) -> None:
        for name in ("p_oracle", "hard_negative_ratio", "injection_rate", "min_support", "question_min_f1"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name, low in (("num_distractors", 0), ("top_k", 1), ("batch_size", 1), ("share_context", 1), ("generate_questions", 0), ("max_prompt_tokens", 64),
                          ("question_top_k", 1), ("request_retries", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        unknown = [f for f in self.format if f not in FORMATS]
        if unknown:
            raise ConfigError(f"unknown --format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
        if len(self.split_ratio) != 3 or min(self.split_ratio) < 0 or sum(self.split_ratio) <= 0:
            raise ConfigError(f"split_ratio must be three non-negative shares (train,validation,test), got {self.split_ratio}")
        for name in ("question_yes_no", "question_unanswerable"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a share between 0 and 1, got {getattr(self, name)}")
        if self.question_yes_no + self.question_unanswerable > 1.0:
            raise ConfigError(f"question_yes_no ({self.question_yes_no}) + question_unanswerable ({self.question_unanswerable}) "
                              "exceeds 1: they are shares of --generate-questions")
        if self.question_no_swap != "corpus" and not self.question_yes_no:
            raise ConfigError(f"--question-no-swap {self.question_no_swap} chooses how written 'No' questions are made, but "
                              "--question-yes-no is 0: add --question-yes-no SHARE or drop --question-no-swap")
        if self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be > 0 seconds, got {self.request_timeout}")
        if self.teacher and self.answer_style != "cot":
            raise ConfigError(f"--teacher writes chain-of-thought targets but answer_style is {self.answer_style}: add --answer-style cot or drop --teacher")
        P.get_template(self.template)
        if "extract" not in self.tasks() and self.schema:
            raise ConfigError(f"schema is {self.schema} but the task mixture {self.task!r} has no extract: add extract to --task "
                              "(e.g. --task qa=0.8,extract=0.2) or drop --schema")
        check_device(self.device)

    def tasks(self) -> dict[str, float]:
        """The task mixture, shares summing to 1 (:func:`rag_pipeline.data.tasks.parse_mixture`)."""
        return tasks.parse_mixture(self.task)


@dataclass
class Example:
    """One question on its way to a row: the chosen documents before fitting."""

    split: str | None
    item: QAItem
    documents: list[Passage]  # DOCUMENT_KEYS only: what the row stores
    oracle_id: str | None
    target: Callable[[int], str]
    group: str  # source document: examples of one document stay in one split
    support: float | None = None  # the oracle's support of the answer, for skipped.jsonl
    task: str = "qa"
    asked: str = ""  # the request the prompt shows (the question, or the task's instruction)


class Tally(Counter):
    """What happened to the questions: counts by event (the manifest's ``counts``), and the
    questions left out, each with its reason (``skipped.jsonl``)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[tuple[int, dict]] = []  # (position among the built questions, -1 before; record)
        self.position: dict[str, int] = {}

    def skip(self, code: str, item: QAItem, score: float | None = None) -> None:
        """Count a skip (``skip_*``, see :data:`SKIP_REASONS`) and list the question with its reason."""
        self[code] += 1
        self.skipped.append((self.position.get(item.id, -1), {
            "id": item.id, "question": item.question, "answer": list(item.answers), "reason": SKIP_REASONS[code], "code": code,
            "support": None if score is None else round(score, 4), "where": item.where}))

    def records(self) -> list[dict]:
        """The skipped questions: those dropped while reading in file order, then the others in question order."""
        return [r for _, r in sorted(self.skipped, key=lambda x: x[0])]


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def qa_files(cfg: RaftConfig) -> list[Path]:
    """The QA files to read: ``--qa`` files, then the split files found in ``--qa-dir``."""
    files = [Path(p) for p in cfg.qa]
    if cfg.qa_dir:
        folder = Path(cfg.qa_dir)
        if not folder.is_dir():
            raise InputError(f"--qa-dir {folder} is not a folder: pass the folder holding train.jsonl, dev.jsonl and test.jsonl")
        found = sorted(p for p in folder.glob("*.jsonl") if p.stem in SPLIT_OF_STEM)
        if not found:
            raise InputError(f"--qa-dir {folder} holds none of {', '.join(s + '.jsonl' for s in SPLIT_OF_STEM)}: name the QA files by split")
        files += found
    return [split for p in files for split in _dataset_splits(p)]


def _dataset_splits(path: Path) -> list[Path]:
    """A ``DatasetDict`` folder as its split folders (named train/validation/test, so they keep their split); else the path."""
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path / 'dataset_dict.json'} is damaged ({e}): save the dataset again with save_to_disk") from None
        return [path / s for s in splits]
    return [path]


def load_questions(cfg: RaftConfig, counts: Tally) -> list[tuple[str | None, QAItem]]:
    """(split or None, item) for every usable question; bad ones are counted in ``counts``.

    Raises:
        InputError: no QA file, one id used for two different questions, or a file with answerable
            questions and no answer at all (no answer column: :func:`rag_pipeline.qa.require_answers`).
    """
    files = qa_files(cfg)
    named = bool(files) and all(p.stem in SPLIT_OF_STEM for p in files)
    seen: dict[str, tuple[tuple, str]] = {}
    out = []
    for path in files:
        items = load_qa(path, cfg.qa_fields())
        require_answers(path, items, cfg.qa_fields(), "turned into training examples")
        for item in items:
            key = (item.question.strip(), tuple(item.answers), item.doc_id, item.answerable, item.context)
            if item.id in seen:
                if seen[item.id][0] != key:
                    raise InputError(f"question id {item.id} is used for two different questions ({seen[item.id][1]} and {path}): make ids unique")
                counts.skip("skip_duplicate", item)
                continue
            seen[item.id] = (key, str(path))
            if not item.question.strip():
                counts.skip("skip_empty_question", item)
            elif item.answerable and not item.answers:
                counts.skip("skip_no_answer", item)
            else:
                out.append((SPLIT_OF_STEM[path.stem] if named else None, item))
    return out


def teacher_options(cfg: RaftConfig) -> Any:
    return TeacherOptions(device=cfg.device, timeout=cfg.request_timeout, retries=cfg.request_retries)


def generated_questions(cfg: RaftConfig, retriever: Any, docs: frozenset[str] | None = None) -> Any:
    """``generate_questions`` QA pairs written from the index's chunks (of ``docs`` only, when
    given) and kept by the round trip (:func:`rag_pipeline.data.questions.generate`); returns its
    :class:`~rag_pipeline.data.questions.Result`."""
    settings = QuestionSettings(n=cfg.generate_questions, style=cfg.question_style, top_k=cfg.question_top_k,
                                min_f1=cfg.question_min_f1, hybrid=cfg.hybrid, seed=cfg.seed, docs=docs,
                                yes_no=cfg.question_yes_no, unanswerable=cfg.question_unanswerable,
                                yes_no_form=cfg.question_yes_no_form, no_swap=cfg.question_no_swap)
    writer, reader = question_models(cfg, retriever)
    return generate_questions(retriever, writer, settings, reader)


def training_documents(questions: list[tuple[str | None, QAItem]]) -> tuple[frozenset[str] | None, str | None]:
    """Where generated questions may come from beside QA files, and their split: the documents of
    the files' train split and "train" when a file names its split; else every document and no
    split (the split rule groups them by document with the rest)."""
    if not any(split for split, _ in questions):
        return None, None
    return frozenset(it.doc_id for split, it in questions if split == "train" and it.doc_id), "train"


def question_models(cfg: RaftConfig, retriever: Any) -> tuple[Any, Any]:
    """The question writer and the round trip's reader named by the config (``None``: the writer reads)."""
    rules = cfg.question_generator == RULES
    if rules and cfg.question_style != "span":
        raise ConfigError(f"--question-generator rules writes questions for span answers, not question_style {cfg.question_style}: "
                          "use --question-style span, or a model writer (hf:PATH_OR_ID or openai:URL#MODEL)")
    writer = RulesWriter() if rules else load_teacher(cfg.question_generator, teacher_options(cfg))
    spec = cfg.question_reader or (f"adapter:{REFERENCE_ADAPTER}" if rules else "")
    if not spec:
        return writer, None
    kind, _, rest = spec.partition(":")
    if kind != "adapter":
        return writer, load_teacher(spec, teacher_options(cfg))

    if not Path(rest).is_dir():
        raise InputError(f"question reader adapter {rest} does not exist: pass --question-reader adapter:DIR (a train-generator "
                         "output) or hf:PATH_OR_ID")
    # the adapter's own best answer from the chunk: greedy, unchecked, opening as it likes, on the dataset's index
    settings = AnswerSettings(index=str(retriever.index_dir), adapter=rest, abstention="greedy", answer_check="off", reread="off",
                              yes_no_questions="free", device=cfg.device, max_new_tokens=32)
    return writer, AdapterReader(Pipeline.load(settings, retriever=retriever))


# ---------------------------------------------------------------------------------------------
# Index and contexts
# ---------------------------------------------------------------------------------------------


def prepare_index(cfg: RaftConfig, items: list[QAItem], stage: Path) -> tuple[str, bool]:
    """The index to use, and whether it was made here from the contexts (in ``stage`` when
    ``--index`` is not given, to be kept as OUTPUT/index).

    An existing ``--index`` is used as it is. Otherwise the QA records' contexts are indexed: at
    ``--index`` when that names a path that does not exist yet, else in ``stage``.

    Raises:
        InputError: no index and no record with a context.
    """
    if cfg.index and Path(cfg.index).exists():
        return cfg.index, False
    contexts = distinct_contexts(items)
    if not contexts:
        if cfg.index:
            return cfg.index, False  # Retriever.load says what is wrong with it
        raise InputError("no index: pass --index DIR (from build-index), or a QA file whose records carry their passage "
                         "(a 'context' field, or name it with --context-field)")
    target = cfg.index or str(stage / "index")
    log.info("indexing the %d distinct contexts of the QA file(s) into %s", len(contexts), target)
    index_contexts(contexts, target, cfg.embedder or MINILM_ID, cfg.device)
    return target, True


def index_contexts(contexts: list[Context], index_dir: str | Path, embedder_id: str, device: str = "auto", embedder: Any = None) -> dict:
    """Index a QA file's contexts as documents at ``index_dir`` with :func:`rag_pipeline.index.build.build_index` (the
    build-index stage: same chunking, embedder and manifest); returns its manifest."""
    with tempfile.TemporaryDirectory(prefix="rag-contexts-") as tmp:
        path = Path(tmp) / CONTEXTS_SOURCE
        path.write_text("".join(json.dumps({"id": c.doc_id, "title": c.title, "text": c.text}, ensure_ascii=False) + "\n" for c in contexts),
                        encoding="utf-8")
        return build_index(IndexConfig(paths=[str(path)], index=str(index_dir), embedder=embedder_id, device=device), embedder=embedder)


def place_contexts(retriever: Any, questions: list[tuple[str | None, QAItem]], built: bool, counts: Tally
                   ) -> tuple[list[tuple[str | None, QAItem]], dict[str, list[Any]], dict]:
    """Give each record with a context its gold document and chunks in the index.

    Returns:
        (questions, gold chunks by normalized context text, a report for the manifest). With an
        index built from the contexts, each record's ``doc_id`` becomes its context's document.
        With an existing index, contexts are matched to its chunks (:func:`contexts.match_contexts`);
        a record whose context lies in one document gets that ``doc_id``; the contexts the index
        lacks are counted (``contexts_missing``) and their records fall back to retrieval.
    """
    items = [it for _, it in questions]
    contexts = distinct_contexts(items)
    if not contexts:
        return questions, {}, {}
    if built:
        items = attach_context_docs(items)
        return [(s, it) for (s, _), it in zip(questions, items)], {}, {"distinct": len(contexts), "indexed": len(contexts)}
    found = match_contexts(retriever, contexts)
    missing = [c for c in contexts if not found[c.text]]
    counts["contexts_missing"] += len(missing)
    if missing:
        log.warning("%d of %d contexts are not in the index (first: %r): their questions get their oracle from retrieval",
                    len(missing), len(contexts), missing[0].text[:80])

    def with_doc(it: QAItem) -> QAItem:
        chunks = found.get(normalize_whitespace(it.context)) if it.context is not None and it.doc_id is None else None
        docs = {c.doc_id for c in chunks or []}
        return dataclasses.replace(it, doc_id=docs.pop()) if len(docs) == 1 else it

    report = {"distinct": len(contexts), "matched": len(contexts) - len(missing), "missing": len(missing),
              "missing_first": [c.text[:200] for c in missing[:5]]}
    return [(s, with_doc(it)) for s, it in questions], {t: c for t, c in found.items() if c}, report


def detect_answer_form(cfg: RaftConfig, store: Any, questions: list[tuple[str | None, QAItem]], context_gold: dict[str, list[Any]]) -> tuple[str, float | None]:
    """``cfg.answer_form``, or for ``auto`` :func:`support.answer_form` over the answerable questions with a known passage."""
    if cfg.answer_form != "auto":
        return cfg.answer_form, None
    items = [it for _, it in questions if it.answerable and it.answers]
    by_doc = store.chunks_of_docs({it.doc_id for it in items if it.doc_id is not None})
    cases = [(it.answers, [c.text for c in gold]) for it in items if (gold := gold_chunks(it, by_doc, context_gold))]
    return answer_form(cases)


def gold_chunks(item: QAItem, by_doc: dict[str, list[Any]], context_gold: dict[str, list[Any]]) -> list[Any] | None:
    """The chunks of an item's gold passage: its context's matched chunks, else its document's
    (``[]`` for a document the index lacks); None when unknown."""
    if item.context is not None and normalize_whitespace(item.context) in context_gold:
        return context_gold[normalize_whitespace(item.context)]
    if item.doc_id is not None:
        return by_doc.get(item.doc_id, [])
    return None


def own_context(item: QAItem, context_gold: dict[str, list[Any]]) -> bool:
    """Whether an item's gold chunks are its own context (its oracle as given), not a document it names."""
    return item.context is not None and (normalize_whitespace(item.context) in context_gold or item.doc_id == context_doc_id(item.context))


# ---------------------------------------------------------------------------------------------
# Oracle, distractors, target
# ---------------------------------------------------------------------------------------------


def find_oracle(cfg: RaftConfig, item: QAItem, hits: list[Any], gold: list[Any] | None, given: bool = False,
                free_form: bool = False) -> tuple[Any | None, str | None]:
    """The oracle: :func:`~rag_pipeline.passage.gold_passage` by rank (the best-ranked hit of the gold
    document holding the answer, else its first chunk holding it by position; for free-form
    answers, else the chunk that supports it best, at least ``min_support``), or None and why (see
    ``missing_oracle``): ``not_indexed`` (its document has no chunk in the index) or ``unsupported``.

    A record's own context is its gold passage by definition, whatever its answer's words ("Yes",
    "He is", a paraphrase): when none of its chunks holds the answer, the oracle is the chunk that
    supports it best (:func:`context_oracle`); such a record is never skipped as unsupported. The
    support rules choose among chunks only where the gold passage is not given.

    Args:
        gold: the chunks of its gold document or context (None: unknown).
        given: they are the record's own context (its oracle as given).
        free_form: the QA set's answers are not spans.
    """
    oracle = gold_passage(item, hits, gold, order="rank", fallback_to_first=False, free_form=free_form,
                          min_support=cfg.min_support)
    if oracle is None and given and gold and item.answerable:
        oracle = context_oracle(item, hits, gold)
    if oracle is not None:
        return oracle, None
    return None, "not_indexed" if item.doc_id is not None and not gold else "unsupported"


def context_oracle(item: QAItem, hits: list[Any], gold: list[Any]) -> Any:
    """The chunk of a record's own context that best backs its answer: the highest recall of the
    answer's content words, then of the question's (:func:`rag_pipeline.support.context_support`:
    "Yes" or "He is" share no word with any chunk), then the better retrieval rank, then position."""
    rank = {h.chunk.id: h.rank for h in hits}
    # max keeps the first of equals: gold is in document order
    return max(gold, key=lambda c: (*context_support(c.text, item.answers, item.question), -rank.get(c.id, float("inf"))))


def best_support(item: QAItem, hits: list[Any], gold: list[Any] | None) -> float | None:
    """The best support of the answer among its gold chunks (else its retrieved ones), for
    ``skipped.jsonl``; None when there is no chunk or no answer."""
    chunks = gold if gold else [h.chunk for h in hits]
    return max((support(c.text, item.answers) for c in chunks), default=None) if item.answers else None


def pick_distractors(rng: random.Random, n: int, n_hard: int, hits: list[Any], store: Any, n_chunks: int,
                     exclude_doc: str | None, oracle: Any | None, answers: list[str], free_form: bool = False,
                     min_support: float = 0.5) -> list[Any]:
    """``n`` distinct chunks: up to ``n_hard`` of the best-ranked usable hits
    (:func:`~rag_pipeline.passage.hard_distractors`, as evaluate's oracle context), the rest random
    usable chunks (RAFT's mix: random ones keep topical variety). None supports an answer; none
    is of the gold document unless the rest of the index runs out (a one-document corpus). Fewer
    than ``n`` only when the index runs out of usable chunks.
    """
    kw = {"free_form": free_form, "min_support": min_support}
    taken = hard_distractors(hits, n_hard, exclude_doc, oracle, answers, **kw)
    tries = 0
    while len(taken) < n and tries < 8:  # rejection sampling: cheap when the index is much larger than n
        for c in store.get_rows(rng.sample(range(n_chunks), min(n_chunks, 2 * (n - len(taken)) + 2))):
            if len(taken) < n and usable_distractor(c, exclude_doc, oracle, answers, taken, **kw):
                taken.append(c)
        tries += 1
    if len(taken) < n:  # tiny index: scan every chunk in a seeded order
        order = store.get_rows(rng.sample(range(n_chunks), n_chunks))
        for doc in (exclude_doc, None):  # the gold document's other chunks only when no other document is left
            for c in order:
                if len(taken) < n and usable_distractor(c, doc, oracle, answers, taken, **kw):
                    taken.append(c)
    return taken


def target_fn(cfg: RaftConfig, item: QAItem, oracle: Any | None, keep_oracle: bool, teacher: Any | None) -> Callable[[int], str]:
    """The target as a function of the oracle's final 1-based-minus-one position (-1: absent)."""
    if not item.answerable or ((not keep_oracle or oracle is None) and cfg.no_oracle_target == "abstain"):
        return lambda pos: P.ABSTAIN
    present = keep_oracle and oracle is not None
    answer = next((a for a in item.answers if present and contains_answer(oracle.text, [a])), item.answers[0])
    if cfg.answer_style == "short" or (not present and cfg.answer_style == "cited"):
        return lambda pos: answer
    if cfg.answer_style == "cited":
        return lambda pos: f"{answer} [{pos + 1}]"
    if not present:
        return lambda pos: f"{ANSWER_TAG} {answer}"
    if teacher is not None:
        cot = write_cot(teacher, item.question, oracle.text, answer)
        return lambda pos: cot
    span = P.support_span(oracle.text, item.answers, cfg.min_support)  # the sentence(s) that best support the answer
    quote = oracle.text[span[0] : span[1]] if span else oracle.text
    return lambda pos: f"Document [{pos + 1}] says: {BEGIN_QUOTE}{quote}{END_QUOTE}\n{ANSWER_TAG} {answer}"


def maybe_inject(docs: list[Passage], rng: random.Random, rate: float, counts: Tally) -> list[Passage]:
    """With probability ``rate``, the documents with a training-payload injection of a random style.

    Drawn from its own RNG, so the other choices of an example do not depend on the rate.
    """
    if rng.random() >= rate:
        return docs
    style = rng.choice(STYLES)
    counts[f"injected_{style}"] += 1
    injected, _ = inject(docs, style, rng.choice(TRAIN_PAYLOADS), rng, train=True)
    return [document(d) for d in injected]


def make_example(cfg: RaftConfig, split: str | None, item: QAItem, hits: list[Any], gold: list[Any] | None, given: bool,
                 free_form: bool, store: Any, n_chunks: int, teacher: Any | None, counts: Tally,
                 schema: dict[str, Any] | None = None) -> Example | None:
    """Choose oracle and distractors for one question with its own seeded RNG; None = counted skip.

    ``gold``, ``given``, ``free_form``: as for :func:`find_oracle`; ``schema``: the JSON schema of the
    records' own extract objects (:func:`extract_schema`).
    """
    rng = random.Random(f"{cfg.seed}:{item.id}")
    keep = rng.random() < cfg.p_oracle  # drawn first, always, so the other draws do not shift it
    oracle, why = find_oracle(cfg, item, hits, gold, given, free_form)
    if oracle is None:
        counts["oracle_not_found"] += 1
        if item.answerable and cfg.missing_oracle == "skip":
            counts["skip_oracle_not_found"] += 1
            counts.skip(f"skip_oracle_{why}", item, best_support(item, hits, gold))
            return None
    n = cfg.num_distractors + (0 if keep and oracle is not None else 1)
    exact = n * cfg.hard_negative_ratio
    n_hard = int(exact) + (rng.random() < exact - int(exact))  # expected share is exactly the ratio
    gold_doc = item.doc_id or (oracle.doc_id if oracle else None)
    distractors = pick_distractors(rng, n, n_hard, hits, store, n_chunks, gold_doc, oracle, item.answers, free_form, cfg.min_support)
    score = support(oracle.text, item.answers) if oracle is not None and item.answers else None
    if len(distractors) < n:
        counts.skip("skip_too_few_distractors", item, score)
        return None
    docs = [document(from_chunk(c)) for c in distractors + ([oracle] if keep and oracle is not None else [])]
    rng.shuffle(docs)
    if cfg.injection_rate:
        docs = maybe_inject(docs, random.Random(f"{cfg.seed}:injection:{item.id}"), cfg.injection_rate, counts)
    oracle_id = oracle.id if keep and oracle is not None else None
    task, target, asked_schema = task_target(cfg, item, oracle, keep, teacher, counts, schema)
    return Example(split, item, docs, oracle_id, target, gold_doc or item.id, score, task, tasks.asked(task, item.question, asked_schema))


def task_target(cfg: RaftConfig, item: QAItem, oracle: Any | None, keep: bool, teacher: Any | None, counts: Tally,
                schema: dict[str, Any] | None = None) -> tuple[str, Callable[[int], str], dict[str, Any] | None]:
    """The example's task, drawn from the mixture with its own RNG, its target as a function of the
    oracle's position (:func:`target_fn` for qa; :mod:`rag_pipeline.data.tasks` for summary and extract),
    and the JSON schema its prompt asks with (extract: the records' ``schema`` for a record with its
    own object, else None, the rule-written target's)."""
    mixture = cfg.tasks()
    task = tasks.draw(mixture, random.Random(f"{cfg.seed}:task:{item.id}"))
    shown = oracle.text if keep and oracle is not None and item.answerable else None
    if task == "summary":
        given = None
        if item.summary and shown is not None:
            given = tasks.given_summary(item.summary)
            counts["summary_given" if given else "summary_given_unwritable"] += 1
        sentences = given or (tasks.summary_sentences(item.question, shown, list(item.answers)) if shown is not None else None)
        if shown is None or sentences is not None:
            return task, lambda pos: tasks.summary_target(sentences, pos), None
    elif task == "extract" and item.extract is not None and schema is not None:
        target = tasks.given_extract(item.extract if shown is not None else None, schema)
        counts["extract_given" if target is not None else "extract_given_invalid"] += 1
        if target is not None:
            return task, lambda pos: target, schema
    elif task == "extract":
        target = tasks.extract_target(shown, list(item.answers))
        if target is not None:
            counts["extract_written"] += 1  # a rule-written target, under tasks.EXTRACT_SCHEMA
            return task, lambda pos: target, None
    if task != "qa":
        counts[f"{task}_written_as_qa"] += 1  # the oracle holds no summary the grammar can hold, or no supporting sentence
    return "qa", target_fn(cfg, item, oracle, keep, teacher), None


# ---------------------------------------------------------------------------------------------
# Budget, rows, splits
# ---------------------------------------------------------------------------------------------


def fit_batch(cfg: RaftConfig, tokenizer: Any, template: P.PromptTemplate, counter: P.TokenEstimator,
              examples: list[Example], counts: Tally) -> list[tuple[Example, dict, int]]:
    """Rows of a batch fitted to the budget, with their token counts; ``counter`` counts the batch
    (exactly near the budget), and only examples over budget go through :func:`prompt.fit_documents`."""

    def pos(docs: list[dict], oracle_id: str | None) -> int:
        return next((i for i, d in enumerate(docs) if d["id"] == oracle_id), -1)

    lengths = counter.count([(e.asked, e.documents, e.target(pos(e.documents, e.oracle_id))) for e in examples], cfg.max_prompt_tokens)
    out = []
    for e, total in zip(examples, lengths):
        docs = e.documents
        if total > cfg.max_prompt_tokens:
            try:
                docs, trunc = P.fit_documents(tokenizer, template, e.asked, docs, pos(docs, e.oracle_id),
                                              e.target, cfg.max_prompt_tokens, e.item.answers)
            except P.BudgetError:
                counts.skip("skip_over_budget", e.item, e.support)
                continue
            counts["truncated_examples"] += 1
            counts["documents_shortened"] += trunc["shortened"]
            counts["documents_dropped"] += trunc["dropped"]
            counts["oracles_trimmed"] += trunc["oracle_trimmed"]
            if e.task == "summary" and trunc["oracle_trimmed"]:  # the target must cite only what the shown oracle holds
                kept = tasks.summary_sentences(e.item.question, docs[pos(docs, e.oracle_id)]["text"], list(e.item.answers))
                if kept is None:
                    counts.skip("skip_over_budget", e.item, e.support)
                    continue
                if e.item.summary and tasks.given_summary(e.item.summary):  # the record's own summary may say what was cut
                    counts["summary_given"] -= 1
                    counts["summary_given_trimmed"] += 1
                e = dataclasses.replace(e, target=lambda p, kept=kept: tasks.summary_target(kept, p))
            total = P.example_tokens(tokenizer, template, e.asked, docs, e.target(pos(docs, e.oracle_id)))
        p = pos(docs, e.oracle_id)
        row = {"id": "r-" + hashlib.sha256(f"{e.item.id}\x00{e.item.question}".encode()).hexdigest()[:16],
               "question": e.item.question, "documents": docs, "oracle_position": p,
               "prompt": P.render_user(template, e.asked, docs), "completion": e.target(p),
               "answer": list(e.item.answers), "answerable": e.item.answerable, "doc_id": e.item.doc_id}
        if cfg.tasks() != {"qa": 1.0}:
            row["task"] = e.task
            counts[f"task_{e.task}"] += 1
        out.append((e, row, total))
    return out


def share_contexts(examples: list[Example], n: int, free_form: bool, min_support: float, counts: Tally,
                   training: Callable[[Example], bool]) -> list[Example]:
    """``share_context``: each training question given the documents of the first question before it with the same
    oracle (and source document), up to ``n`` questions a context, when none of that question's other documents
    holds its answer (:func:`~rag_pipeline.passage.holds_answer`, the distractors' rule); counted as ``shared_context``.
    Questions of the ``qa`` task only, with their oracle, in the train split (validation is read apart, and stays as
    an unshared build's, so that validation losses compare)."""
    leaders: dict[tuple, tuple[Example, int]] = {}
    out = []
    for e in examples:
        if e.oracle_id is None or e.task != "qa" or not training(e):
            out.append(e)
            continue
        key = (e.group, e.oracle_id)
        lead = leaders.get(key)
        answers = list(e.item.answers)
        if lead is not None and lead[1] < n and not any(
                holds_answer(d["text"], answers, free_form=free_form, min_support=min_support)
                for d in lead[0].documents if d["id"] != e.oracle_id):
            out.append(dataclasses.replace(e, documents=lead[0].documents))
            leaders[key] = (lead[0], lead[1] + 1)
            counts["shared_context"] += 1
            continue
        leaders[key] = (e, 1)
        out.append(e)
    return out


def split_of(group: str, seed: int, ratio: list[float]) -> str:
    """A seeded, order-independent split for a source document: hash -> [0, 1) -> cumulative ratio."""
    u = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for name, share in zip(SPLITS, ratio):
        edge += share / sum(ratio)
        if u < edge:
            return name
    return SPLITS[-1]


def build_rows(cfg: RaftConfig, retriever: Any, tokenizer: Any, template: P.PromptTemplate, questions: list[tuple[str | None, QAItem]],
               counts: Tally, context_gold: dict[str, list[Any]] | None = None, free_form: bool = False,
               schema: dict[str, Any] | None = None) -> tuple[dict[str, list[dict]], dict[str, list[int]]]:
    """All rows by split, with their token counts; questions are searched ``batch_size`` at a time.

    ``context_gold``: the index's chunks of each matched context (:func:`place_contexts`);
    ``free_form``: the answers are not spans (:func:`detect_answer_form`); ``schema``: the records' own
    extract objects' (:func:`extract_schema`).
    """
    from tqdm.auto import tqdm

    teacher = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, teacher_options(cfg))
    context_gold = context_gold or {}
    store, n_chunks = retriever.store, len(retriever)
    counter = P.TokenEstimator(tokenizer, template)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    tokens: dict[str, list[int]] = {s: [] for s in SPLITS}

    def place(examples: list[Example]) -> None:
        for e, row, total in fit_batch(cfg, tokenizer, template, counter, examples, counts):
            split = e.split or split_of(e.group, cfg.seed, cfg.split_ratio)
            rows[split].append(row)
            tokens[split].append(total)

    pending: list[Example] = []  # with share_context, every question's example first: a context is shared across batches
    for start in tqdm(range(0, len(questions), cfg.batch_size), desc="raft", unit="batch", disable=None):
        batch = questions[start : start + cfg.batch_size]
        hits = retriever.search_batch([it.question for _, it in batch], cfg.top_k, cfg.hybrid)
        by_doc = store.chunks_of_docs({it.doc_id for _, it in batch if it.doc_id is not None})
        examples = [make_example(cfg, split, it, h, gold_chunks(it, by_doc, context_gold), own_context(it, context_gold), free_form,
                                 store, n_chunks, teacher, counts, schema)
                    for (split, it), h in zip(batch, hits)]
        examples = [e for e in examples if e]
        if cfg.share_context > 1:
            pending += examples
        else:
            place(examples)
    if pending:
        pending = share_contexts(pending, cfg.share_context, free_form, cfg.min_support, counts,
                                 lambda e: (e.split or split_of(e.group, cfg.seed, cfg.split_ratio)) == "train")
        for start in range(0, len(pending), cfg.batch_size):
            place(pending[start : start + cfg.batch_size])
    return rows, tokens


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def columns(cfg: RaftConfig) -> tuple[str, ...]:
    """The dataset's columns: :data:`COLUMNS`, and ``task`` when the examples are not all qa."""
    return COLUMNS + (("task",) if cfg.tasks() != {"qa": 1.0} else ())


def features(with_task: bool = False) -> Any:
    from datasets import Features, List, Value

    doc = {"id": Value("string"), "title": Value("string"), "text": Value("string")}
    return Features({"id": Value("string"), "question": Value("string"), "documents": List(doc), "oracle_position": Value("int32"),
                     "prompt": Value("string"), "completion": Value("string"), "answer": List(Value("string")),
                     "answerable": Value("bool"), "doc_id": Value("string"), **({"task": Value("string")} if with_task else {})})


def export_row(fmt: str, row: dict, template: P.PromptTemplate, model_text: Callable[[str], str], cot: str) -> dict:
    """One row in an export format (see the module docstring)."""
    if fmt == "chat":
        return {"id": row["id"], "messages": [{"role": "system", "content": template.system},
                                              {"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["completion"]}]}
    if fmt == "completion":  # the exact text the generator sees (chat template applied), then the target
        return {"id": row["id"], "prompt": model_text(row["prompt"]), "completion": row["completion"]}
    if fmt == "eval":
        return {"id": row["id"], "question": row["question"], "answer": row["answer"], "doc_id": row["doc_id"], "answerable": row["answerable"],
                **({"task": row["task"]} if "task" in row else {})}
    docs, p = row["documents"], row["oracle_position"]
    return {"id": row["id"], "type": "general", "question": row["question"],
            "context": {"title": [[d["title"] for d in docs]], "sentences": [[d["text"] for d in docs]]},
            "oracle_context": docs[p]["text"] if p >= 0 else "", "cot_answer": cot,
            "instruction": "".join(f"<DOCUMENT>{d['text']}</DOCUMENT>\n" for d in docs) + row["question"]}


def cot_of(row: dict) -> str:
    """RAFT's ``cot_answer`` for the raft export, whatever the answer style: quote + ``<ANSWER>:`` (a summary's
    or a JSON answer's target as it is)."""
    if row.get("task", "qa") != "qa":
        return row["completion"]
    if not row["answerable"] or row["completion"] == P.ABSTAIN:
        return f"{ANSWER_TAG} {P.ABSTAIN}"
    p, answer = row["oracle_position"], row["answer"][0]
    if p < 0:
        return f"{ANSWER_TAG} {answer}"
    text = row["documents"][p]["text"]
    span = P.support_span(text, row["answer"])
    answer = next((a for a in row["answer"] if contains_answer(text, [a])), answer)
    quote = text[span[0] : span[1]] if span else text
    return f"Document [{p + 1}] says: {BEGIN_QUOTE}{quote}{END_QUOTE}\n{ANSWER_TAG} {answer}"


def fingerprint(root: Path) -> str:
    """sha256 over the relative paths and bytes of every JSONL file under ``root``, sorted (the
    list of skipped questions aside: it describes the build, not the dataset)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jsonl")):
        if p.relative_to(root).as_posix() == SKIPPED_FILE:
            continue
        h.update(f"{p.relative_to(root).as_posix()}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def write_output(cfg: RaftConfig, rows: dict[str, list[dict]], template: P.PromptTemplate, model_text: Callable[[str], str],
                 manifest: dict, extra: dict[str, Path] | None = None, skipped: list[dict] | None = None) -> dict:
    """Write dataset/, jsonl/, exports/ and manifest.json into ``cfg.output`` atomically, with the
    ``extra`` directories (name -> a directory on the same filesystem, moved in: index/, questions/)
    and ``skipped.jsonl`` when questions were ``skipped``."""
    from datasets import Dataset, DatasetDict, NamedSplit

    with atomic_dir(cfg.output, ARTIFACT) as tmp:
        for name, src in (extra or {}).items():
            os.rename(src, tmp / name)
        parts = {}
        for s in SPLITS:
            write_jsonl(tmp / "jsonl" / f"{s}.jsonl", rows[s])
            cols = columns(cfg)
            feats = features("task" in cols)
            ds = Dataset.from_list(rows[s], features=feats) if rows[s] else Dataset.from_dict({c: [] for c in cols}, features=feats)
            # A content fingerprint instead of datasets' random one keeps dataset/ byte-identical too.
            fp = hashlib.sha256((tmp / "jsonl" / f"{s}.jsonl").read_bytes()).hexdigest()[:16]
            parts[s] = Dataset(ds.data, info=ds.info, split=NamedSplit(s), fingerprint=fp)
        # An empty split gets one (empty) shard: with zero shards datasets cannot load it back.
        DatasetDict(parts).save_to_disk(str(tmp / "dataset"), num_shards={s: 1 for s in SPLITS if not rows[s]})
        for fmt in cfg.format:
            for s in SPLITS:
                write_jsonl(tmp / "exports" / fmt / f"{s}.jsonl", [export_row(fmt, r, template, model_text, cot_of(r) if fmt == "raft" else "") for r in rows[s]])
        if skipped:
            write_jsonl(tmp / SKIPPED_FILE, skipped)
        manifest = {**manifest, "fingerprint": fingerprint(tmp)}
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def load_tokenizer(generator: str) -> Any:
    """The generator's fast tokenizer, resolved offline (:func:`rag_pipeline.generator.load_tokenizer`)."""
    return load_generator_tokenizer(resolve_model(generator), None,
                                    require_fast=f"the budget fitter needs one; pick another --generator than {generator}")


def summarize(rows: dict[str, list[dict]], tokens: dict[str, list[int]]) -> dict[str, dict]:
    """Per split: examples, oracle rate, abstain targets, average and max tokens."""
    out = {}
    for s in SPLITS:
        r, t = rows[s], tokens[s]
        out[s] = {"examples": len(r),
                  "oracle_rate": round(sum(x["oracle_position"] >= 0 for x in r) / len(r), 4) if r else 0.0,
                  "abstain_rate": round(sum(x["completion"] == P.ABSTAIN for x in r) / len(r), 4) if r else 0.0,
                  "avg_tokens": round(sum(t) / len(t), 1) if t else 0.0, "max_tokens": max(t, default=0)}
    return out


def small_data(cfg: RaftConfig, questions: list[tuple[str | None, QAItem]], rows: dict[str, list[dict]], tokens: dict[str, list[int]]
               ) -> tuple[dict[str, list[dict]], dict[str, list[int]], list[str]]:
    """A ratio split that left train empty puts everything in train (:func:`splits.ensure_train`); the warnings to show."""
    warnings = []
    if any(split is None for split, _ in questions):  # split by ratio, not by the files' names
        groups = len({r["doc_id"] or r["id"] for s in SPLITS for r in rows[s]})
        parts, moved = ensure_train({s: list(zip(rows[s], tokens[s])) for s in SPLITS}, cfg.split_ratio, groups)
        if moved:
            warnings.append(moved)
            rows, tokens = {s: [r for r, _ in parts[s]] for s in SPLITS}, {s: [t for _, t in parts[s]] for s in SPLITS}
    small = train_warning(len(rows["train"]))
    return rows, tokens, warnings + ([small] if small else [])


def extract_schema(cfg: RaftConfig, items: list[QAItem]) -> dict[str, Any] | None:
    """The JSON schema of the records' own ``extract`` objects: ``--schema``'s (every object is then checked
    against it when its example is written), else inferred from up to 200 of them
    (:func:`rag_pipeline.data.tasks.infer_schema`); None when the mixture has no extract or no record has one.

    Raises:
        InputError: an unreadable or invalid ``--schema``, or a schema constrained decoding cannot enforce.
    """
    if "extract" not in cfg.tasks():
        return None
    if cfg.schema:
        schema = structured.load_schema(cfg.schema)
        if not isinstance(schema.get("properties"), dict) or not schema["properties"]:
            raise InputError(f"--schema {cfg.schema} names no properties: training targets need the fields a JSON answer "
                             "holds; give a schema with \"properties\" (or leave --schema out to infer one from the records)")
        return schema
    own = [it.extract for it in items if it.extract is not None]
    if not own:
        return None
    where = f"the schema inferred from {min(len(own), tasks.SCHEMA_SAMPLE)} records' 'extract' objects"
    try:
        return structured.check_schema(tasks.infer_schema(own), where)
    except InputError as e:
        raise InputError(f"{e}: give the schema yourself with --schema FILE") from None


def write_question_samples(stage: Path, generated: Any, limit: int = 1000) -> Path:
    """``questions/kept.jsonl`` and ``questions/dropped.jsonl`` (the first ``limit`` of each) in ``stage``."""
    out = stage / "questions"
    write_jsonl(out / "kept.jsonl", [p.to_dict() for p in generated.kept[:limit]])
    write_jsonl(out / "dropped.jsonl", [p.to_dict() for p in generated.dropped[:limit]])
    return out


def run(cfg: RaftConfig) -> dict:
    """Build the RAFT dataset; returns the manifest plus ``seconds`` (and, when questions were
    skipped, ``skipped`` with the path of skipped.jsonl and their ids).

    The output is locked for the whole build (:func:`rag_pipeline.atomic.output_lock`): a second
    build to the same ``--output`` fails at once instead of silently replacing this one's result.

    Raises:
        InputError: no questions, no index and no contexts, a QA file without answers, an index
            smaller than num_distractors + 1, no example built, or a question writer that failed.
        IndexError_: the index is missing, corrupt, or was built with another embedder than ``--embedder``.
        ConfigError: another build holds the lock on ``--output``.
    """
    t0 = time.perf_counter()
    if not (cfg.qa or cfg.qa_dir or cfg.generate_questions):
        raise InputError("no questions: pass --qa FILE, --qa-dir FOLDER (train/dev/test.jsonl) or --index DIR --generate-questions N")
    check_separate([*cfg.qa, *([cfg.qa_dir] if cfg.qa_dir else []), *([cfg.index] if cfg.index else [])], cfg.output)
    with output_lock(cfg.output):
        return {**build(cfg), "seconds": round(time.perf_counter() - t0, 2)}


def build(cfg: RaftConfig) -> dict:
    """:func:`run`'s work, under the output's lock; returns the manifest plus ``skipped``."""
    prepare_target(cfg.output, ARTIFACT)
    template = P.get_template(cfg.template)
    counts = Tally()
    questions = load_questions(cfg, counts) if (cfg.qa or cfg.qa_dir) else []
    schema = extract_schema(cfg, [it for _, it in questions])
    with staging_dir(cfg.output) as stage:
        index_dir, indexed = prepare_index(cfg, [it for _, it in questions], stage)
        built_here = indexed and not cfg.index  # kept as OUTPUT/index
        retriever = Retriever.load(index_dir, device=cfg.device, expect_embedder=cfg.embedder or None)
        if len(retriever) < cfg.num_distractors + 2:
            raise InputError(f"index {index_dir} holds {len(retriever)} chunks, too few for an oracle and {cfg.num_distractors} distractors "
                             f"(+1 when the oracle is left out): index more text or lower --num-distractors to {max(0, len(retriever) - 2)}")
        questions, context_gold, contexts = place_contexts(retriever, questions, indexed, counts)
        generated = None
        if cfg.generate_questions:
            docs, split = training_documents(questions)
            generated = generated_questions(cfg, retriever, docs)
            # yes/no and unanswerable items carry their chunk as their context: it is their gold passage
            more, more_gold, _ = place_contexts(retriever, [(split, it) for it in generated.items], False, counts)
            questions, context_gold = questions + more, {**context_gold, **more_gold}
        counts.position = {it.id: i for i, (_, it) in enumerate(questions)}  # skipped.jsonl in question order
        form, share = detect_answer_form(cfg, retriever.store, questions, context_gold)
        tokenizer = load_tokenizer(cfg.generator)
        rows, tokens = build_rows(cfg, retriever, tokenizer, template, questions, counts, context_gold, form == "free-form", schema)
        if not any(rows.values()):
            raise InputError(f"no example was built from {len(questions)} questions (counts: {dict(sorted(counts.items()))}): check that the QA file matches the index")
        skipped = counts.records()
        rows, tokens, warnings = small_data(cfg, questions, rows, tokens)
        own = schema is not None and counts["extract_given"] > 0  # examples of the records' own JSON objects
        ruled = counts["extract_written"] > 0  # rule-written JSON targets, under tasks.EXTRACT_SCHEMA
        answered = schema if own else tasks.EXTRACT_SCHEMA if ruled else None  # stored: ask --task extract's default
        if own and ruled:
            warnings.append(f"{counts['extract_written']} extract examples of records without their own 'extract' object are "
                            "rule-written under the answer/quote schema, not the stored extract_schema (ask's default): give "
                            "every record an 'extract' object to train one schema")
        if schema is not None and counts["extract_given_invalid"]:
            stored = "" if own else ": no example used one, so " + (
                "the extract_schema stored is the rule-written targets' (answer, quote)" if ruled else "no extract_schema is stored")
            warnings.append(f"{counts['extract_given_invalid']} records' own 'extract' objects do not validate against the "
                            f"{'schema of --schema' if cfg.schema else 'inferred schema'} and were written as qa{stored}")
        stats = summarize(rows, tokens)
        params = {k: v for k, v in to_dict(cfg).items() if k not in ("output", "json")}  # the output path is where the manifest lives
        manifest = {"kind": "raft-dataset", "template": template.name, "template_text": P.template_text(template), "seed": cfg.seed,
                    "params": params,
                    "index": {"path": "index" if built_here else index_dir, "built_from_contexts": indexed,
                              "fingerprint": retriever.manifest["corpus"]["fingerprint"], "embedder": retriever.manifest["embedder"]["id"]},
                    "generator_tokenizer": cfg.generator, "columns": list(columns(cfg)), "splits": list(SPLITS),
                    **({"tasks": cfg.tasks()} if "task" in columns(cfg) else {}),
                    **({"extract_schema": answered} if answered is not None else {}),
                    "answer_form": {"form": form, "verbatim_share": share},
                    "counts": {"questions": len(questions), **{f"examples_{s}": stats[s]["examples"] for s in SPLITS}, **dict(sorted(counts.items()))},
                    "stats": stats, "empty_splits": [s for s in SPLITS if not rows[s]], "warnings": warnings,
                    **({"skipped": {"file": SKIPPED_FILE, "questions": len(skipped)}} if skipped else {})}
        if contexts:
            manifest["contexts"] = contexts
        extra = {"index": Path(index_dir)} if built_here else {}
        if generated is not None:
            manifest["generated_questions"] = generated.report
            extra["questions"] = write_question_samples(stage, generated)
        retriever.store.close()
        manifest = write_output(cfg, rows, template, P.model_text_fn(tokenizer, template), manifest, extra, skipped)
    if skipped:  # the ids for the caller (--json); the file holds the records
        manifest = {**manifest, "skipped": {**manifest["skipped"], "path": str(Path(cfg.output) / SKIPPED_FILE),
                                            "ids": [r["id"] for r in skipped]}}
    return manifest


# What an empty split means downstream, and how to get one.
EMPTY_SPLIT_FIX = {
    "train": "train-generator cannot use this dataset; give training questions (train.jsonl, or a file split by --split-ratio)",
    "validation": "train-generator will train without evaluation or best-checkpoint selection; add dev.jsonl to --qa-dir, "
                  "or use more questions or a larger validation share in --split-ratio",
    "test": "nothing is held out for testing (train-generator does not need it); add test.jsonl to --qa-dir if you want one",
}


# Why a question was skipped, in words for the summary.
SKIP_REASONS = {
    "skip_empty_question": "blank question",
    "skip_no_answer": "answerable but no answer given",
    "skip_duplicate": "repeated record",
    "skip_oracle_not_indexed": "its document or context is not in the index",
    "skip_oracle_unsupported": "no chunk supports its answer (span data: none holds it verbatim; free-form: none holds "
                               "--min-support of its content words)",
    "skip_too_few_distractors": "the index ran out of distractors",
    "skip_over_budget": "question and answer alone exceed --max-prompt-tokens",
}


def format_table(result: dict) -> str:
    """The stats table printed at the end of a build: skips with their reasons, generated
    questions, and a warning line per empty split, small train split or moved split."""
    st, c = result["stats"], result["counts"]
    lines = [f"{'split':<11}{'examples':>9}{'oracle':>8}{'abstain':>9}{'avg tok':>9}{'max tok':>9}"]
    for s in SPLITS:
        x = st[s]
        lines.append(f"{s:<11}{x['examples']:>9}{x['oracle_rate']:>8.1%}{x['abstain_rate']:>9.1%}{x['avg_tokens']:>9.1f}{x['max_tokens']:>9}")
    other = {k: v for k, v in c.items() if not k.startswith("examples_")}
    lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in other.items()))
    skipped = {k: v for k, v in c.items() if k in SKIP_REASONS and v}
    if skipped:
        listed = f" (listed in {result['skipped']['path']})" if "path" in result.get("skipped", {}) else ""
        lines.append(f"skipped {sum(skipped.values())} of {c['questions'] + c.get('skip_empty_question', 0) + c.get('skip_no_answer', 0) + c.get('skip_duplicate', 0)} "
                     "questions" + listed + ": " + "; ".join(f"{v} {SKIP_REASONS[k]}" for k, v in skipped.items()))
    if "answer_form" in result:
        af = result["answer_form"]
        lines.append(f"answers: {af['form']}" + (f" ({af['verbatim_share']:.0%} occur verbatim in their passage)" if af.get("verbatim_share") is not None else ""))
    if "generated_questions" in result:
        lines.append(summary_line(result["generated_questions"]))
    lines += [f"warning: split '{s}' is empty: {EMPTY_SPLIT_FIX[s]}" for s in result.get("empty_splits", [])]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def main(cfg: RaftConfig) -> int:
    """CLI entry: build, then print the stats table."""
    import datasets

    datasets.disable_progress_bars()  # one table at the end instead of a bar per split
    result = run(cfg)
    if cfg.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(format_table(result))
    print(f"wrote {cfg.output} ({result['seconds']} s; template {result['template']}, fingerprint {result['fingerprint'][:12]})")
    return 0
