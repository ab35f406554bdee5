"""``build-raft-dataset``: RAFT training data from an index and QA pairs.

Each question gets its oracle chunk (the chunk that holds the answer) and N distractors
(hard negatives from the retriever's top results mixed with random chunks), the oracle kept
with probability P, in shuffled order, fitted to the generator's token budget, with a target
in the chosen answer style (RAFT, Zhang et al. 2024; gorilla/raft ``raft.py``).

Reads an index directory and QA files; writes ``OUTPUT/`` atomically::

    dataset/            datasets.DatasetDict (train, validation, test), save_to_disk
    jsonl/{split}.jsonl the same rows as JSON lines
    exports/{format}/{split}.jsonl   chat | completion | raft | eval
    manifest.json       template (name and text), seed, params, index, tokenizer, counts, fingerprint

Every random choice of an example comes from ``random.Random(f"{seed}:{question id}")``, so the
output is byte-identical for the same inputs and seed and does not depend on batch order.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline import prompt as P
from rag_pipeline.atomic import Artifact, check_separate, prepare_target, write_jsonl
from rag_pipeline.config import opt, to_dict
from rag_pipeline.device import check_device
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.model_paths import SMOLLM2_ID
from rag_pipeline.passage import Passage, document, from_chunk, gold_passage, hard_distractors, usable_distractor
from rag_pipeline.qa import QAItem, load_qa
from rag_pipeline.textnorm import contains_answer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_OF_STEM = {"train": "train", "dev": "validation", "validation": "validation", "val": "validation", "test": "test"}
FORMATS = ("chat", "completion", "raft", "eval")
COLUMNS = ("id", "question", "documents", "oracle_position", "prompt", "completion", "answer", "answerable", "doc_id")

# The output directory build-raft-dataset may replace: its own manifest and folders, nothing else.
ARTIFACT = Artifact("a RAFT dataset", "manifest.json", "raft-dataset", allowed=frozenset({"manifest.json", "dataset", "jsonl", "exports"}))


@dataclass
class RaftConfig:
    """Settings of ``build-raft-dataset``; all of them are recorded in the output's manifest."""

    index: str = opt("indexes/disfl_qa", "index directory (from build-index)")
    qa: list[str] = opt(factory=list, help="QA JSONL files; named train/dev/validation/test.jsonl keep that split, else split by --split-ratio")
    qa_dir: str = opt("", "folder holding train.jsonl, dev.jsonl (-> validation) and test.jsonl: use the corpus's own split")
    output: str = opt("runs/raft", "output directory (replaced atomically)")
    embedder: str = opt("", "embedder the index must have been built with; '' = whatever the index records")
    num_distractors: int = opt(3, "distractor documents per example (RAFT's default, 4 documents in all)")
    hard_negative_ratio: float = opt(0.5, "share of distractors taken from the retriever's top hits (rest random): "
                                          "hard ones teach ignoring near misses, random ones keep topical variety")
    top_k: int = opt(20, "retrieval depth per question for the oracle search and the hard negatives")
    hybrid: bool = opt(True, "retrieve with dense + BM25 fused by reciprocal rank (as ask and evaluate do): harder, "
                             "lexically close distractors; --no-hybrid for dense only")
    injection_rate: float = opt(0.0, "share of examples given a prompt-injection document (rag_pipeline.injection: plain, "
                                     "forged delimiter, many-shot, hidden; training payloads, never evaluate's) with the normal "
                                     "target, so the adapter learns to ignore instructions inside documents")
    p_oracle: float = opt(0.8, "probability that the oracle stays in the context (RAFT's P; 0.8 works best in the paper)")
    no_oracle_target: Literal["abstain", "answer"] = opt("abstain", "target when the oracle is left out: abstain (matches the "
                                                                 "template's instruction; test paragraphs are unseen, so answering from memory "
                                                                 "teaches guessing) or answer (RAFT's choice, for closed domains)")
    missing_oracle: Literal["skip", "keep"] = opt("skip", "answerable questions whose answer is in no chunk: skip (likely label noise) "
                                                        "or keep as no-oracle examples")
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
    question_generator: str = opt("", "model making questions from chunks when no QA file is given: fake | hf:MODEL | openai:URL#MODEL")
    generate_questions: int = opt(0, "questions generated per chunk (needs --question-generator; used when no QA file is given)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to embed the questions")

    def __post_init__(self) -> None:
        for name in ("p_oracle", "hard_negative_ratio", "injection_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name, low in (("num_distractors", 0), ("top_k", 1), ("batch_size", 1), ("generate_questions", 0), ("max_prompt_tokens", 64)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        unknown = [f for f in self.format if f not in FORMATS]
        if unknown:
            raise ConfigError(f"unknown --format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
        if len(self.split_ratio) != 3 or min(self.split_ratio) < 0 or sum(self.split_ratio) <= 0:
            raise ConfigError(f"split_ratio must be three non-negative shares (train,validation,test), got {self.split_ratio}")
        if self.generate_questions and not self.question_generator:
            raise ConfigError("--generate-questions needs --question-generator (fake | hf:MODEL | openai:URL#MODEL)")
        if self.teacher and self.answer_style != "cot":
            raise ConfigError(f"--teacher writes chain-of-thought targets but answer_style is {self.answer_style}: add --answer-style cot or drop --teacher")
        P.get_template(self.template)
        check_device(self.device)


@dataclass
class Example:
    """One question on its way to a row: the chosen documents before fitting."""

    split: str | None
    item: QAItem
    documents: list[Passage]  # DOCUMENT_KEYS only: what the row stores
    oracle_id: str | None
    target: Callable[[int], str]
    group: str  # source document: examples of one document stay in one split


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
    return files


def load_questions(cfg: RaftConfig, counts: Counter) -> list[tuple[str | None, QAItem]]:
    """(split or None, item) for every usable question; bad ones are counted in ``counts``.

    Raises:
        InputError: no QA file, or one id used for two different questions.
    """
    files = qa_files(cfg)
    named = bool(files) and all(p.stem in SPLIT_OF_STEM for p in files)
    seen: dict[str, tuple[tuple, str]] = {}
    out = []
    for path in files:
        for item in load_qa(path):
            key = (item.question.strip(), tuple(item.answers), item.doc_id, item.answerable)
            if item.id in seen:
                if seen[item.id][0] != key:
                    raise InputError(f"question id {item.id} is used for two different questions ({seen[item.id][1]} and {path}): make ids unique")
                counts["skip_duplicate"] += 1
                continue
            seen[item.id] = (key, str(path))
            if not item.question.strip():
                counts["skip_empty_question"] += 1
            elif item.answerable and not item.answers:
                counts["skip_no_answer"] += 1
            else:
                out.append((SPLIT_OF_STEM[path.stem] if named else None, item))
    return out


def generated_questions(cfg: RaftConfig, store: Any) -> list[tuple[str | None, QAItem]]:
    """RAFT's own flow: ``generate_questions`` QA pairs per chunk from the question generator."""
    from rag_pipeline.teacher import generate_questions, load_teacher

    gen = load_teacher(cfg.question_generator)
    out = []
    for chunk in store.iter_chunks():
        for q, a in generate_questions(gen, chunk.text, cfg.generate_questions):
            qid = "g-" + hashlib.sha256(f"{chunk.id}\x00{q}".encode()).hexdigest()[:12]
            out.append((None, QAItem(qid, q, [a], chunk.doc_id, True)))
    if not out:
        raise InputError(f"question generator {cfg.question_generator} produced no usable question (answers must occur in the chunk)")
    return out


# ---------------------------------------------------------------------------------------------
# Oracle, distractors, target
# ---------------------------------------------------------------------------------------------


def find_oracle(item: QAItem, hits: list[Any], chunks_of_doc: list[Any] | None) -> Any | None:
    """The oracle: :func:`~rag_pipeline.passage.gold_passage` by rank (the best-ranked hit of the gold
    document holding the answer, else its first chunk holding it by position), None when no chunk
    holds the answer (see ``missing_oracle``)."""
    return gold_passage(item, hits, chunks_of_doc, order="rank", fallback_to_first=False)


def pick_distractors(rng: random.Random, n: int, n_hard: int, hits: list[Any], store: Any, n_chunks: int,
                     exclude_doc: str | None, oracle: Any | None, answers: list[str]) -> list[Any]:
    """``n`` distinct chunks: up to ``n_hard`` of the best-ranked usable hits
    (:func:`~rag_pipeline.passage.hard_distractors`, as evaluate's oracle context), the rest random
    usable chunks (RAFT's mix: random ones keep topical variety). Fewer than ``n`` only when the
    index runs out of usable chunks.
    """
    taken = hard_distractors(hits, n_hard, exclude_doc, oracle, answers)
    tries = 0
    while len(taken) < n and tries < 8:  # rejection sampling: cheap when the index is much larger than n
        for c in store.get_rows(rng.sample(range(n_chunks), min(n_chunks, 2 * (n - len(taken)) + 2))):
            if len(taken) < n and usable_distractor(c, exclude_doc, oracle, answers, taken):
                taken.append(c)
        tries += 1
    if len(taken) < n:  # tiny index: scan every chunk in a seeded order
        for c in store.get_rows(rng.sample(range(n_chunks), n_chunks)):
            if len(taken) < n and usable_distractor(c, exclude_doc, oracle, answers, taken):
                taken.append(c)
    return taken


def target_fn(cfg: RaftConfig, item: QAItem, oracle: Any | None, keep_oracle: bool, teacher: Any | None) -> Callable[[int], str]:
    """The target as a function of the oracle's final 1-based-minus-one position (-1: absent)."""
    from rag_pipeline.teacher import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, write_cot

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
    span = P.answer_sentence_span(oracle.text, item.answers)
    quote = oracle.text[span[0] : span[1]] if span else oracle.text
    return lambda pos: f"Document [{pos + 1}] says: {BEGIN_QUOTE}{quote}{END_QUOTE}\n{ANSWER_TAG} {answer}"


def maybe_inject(docs: list[Passage], rng: random.Random, rate: float, counts: Counter) -> list[Passage]:
    """With probability ``rate``, the documents with a training-payload injection of a random style.

    Drawn from its own RNG, so the other choices of an example do not depend on the rate.
    """
    from rag_pipeline.injection import STYLES, TRAIN_PAYLOADS, inject

    if rng.random() >= rate:
        return docs
    style = rng.choice(STYLES)
    counts[f"injected_{style}"] += 1
    injected, _ = inject(docs, style, rng.choice(TRAIN_PAYLOADS), rng, train=True)
    return [document(d) for d in injected]


def make_example(cfg: RaftConfig, split: str | None, item: QAItem, hits: list[Any], chunks_of_doc: list[Any] | None,
                 store: Any, n_chunks: int, teacher: Any | None, counts: Counter) -> Example | None:
    """Choose oracle and distractors for one question with its own seeded RNG; None = counted skip."""
    rng = random.Random(f"{cfg.seed}:{item.id}")
    keep = rng.random() < cfg.p_oracle  # drawn first, always, so the other draws do not shift it
    oracle = find_oracle(item, hits, chunks_of_doc)
    if oracle is None:
        counts["oracle_not_found"] += 1
        if item.answerable and cfg.missing_oracle == "skip":
            counts["skip_oracle_not_found"] += 1
            return None
    n = cfg.num_distractors + (0 if keep and oracle is not None else 1)
    exact = n * cfg.hard_negative_ratio
    n_hard = int(exact) + (rng.random() < exact - int(exact))  # expected share is exactly the ratio
    gold_doc = item.doc_id or (oracle.doc_id if oracle else None)
    distractors = pick_distractors(rng, n, n_hard, hits, store, n_chunks, gold_doc, oracle, item.answers)
    if len(distractors) < n:
        counts["skip_too_few_distractors"] += 1
        return None
    docs = [document(from_chunk(c)) for c in distractors + ([oracle] if keep and oracle is not None else [])]
    rng.shuffle(docs)
    if cfg.injection_rate:
        docs = maybe_inject(docs, random.Random(f"{cfg.seed}:injection:{item.id}"), cfg.injection_rate, counts)
    oracle_id = oracle.id if keep and oracle is not None else None
    return Example(split, item, docs, oracle_id, target_fn(cfg, item, oracle, keep, teacher), gold_doc or item.id)


# ---------------------------------------------------------------------------------------------
# Budget, rows, splits
# ---------------------------------------------------------------------------------------------


def fit_batch(cfg: RaftConfig, tokenizer: Any, template: P.PromptTemplate, counter: P.TokenEstimator,
              examples: list[Example], counts: Counter) -> list[tuple[Example, dict, int]]:
    """Rows of a batch fitted to the budget, with their token counts; ``counter`` counts the batch
    (exactly near the budget), and only examples over budget go through :func:`prompt.fit_documents`."""

    def pos(docs: list[dict], oracle_id: str | None) -> int:
        return next((i for i, d in enumerate(docs) if d["id"] == oracle_id), -1)

    lengths = counter.count([(e.item.question, e.documents, e.target(pos(e.documents, e.oracle_id))) for e in examples], cfg.max_prompt_tokens)
    out = []
    for e, total in zip(examples, lengths):
        docs = e.documents
        if total > cfg.max_prompt_tokens:
            try:
                docs, trunc = P.fit_documents(tokenizer, template, e.item.question, docs, pos(docs, e.oracle_id),
                                              e.target, cfg.max_prompt_tokens, e.item.answers)
            except P.BudgetError:
                counts["skip_over_budget"] += 1
                continue
            counts["truncated_examples"] += 1
            counts["documents_shortened"] += trunc["shortened"]
            counts["documents_dropped"] += trunc["dropped"]
            counts["oracles_trimmed"] += trunc["oracle_trimmed"]
            total = P.example_tokens(tokenizer, template, e.item.question, docs, e.target(pos(docs, e.oracle_id)))
        p = pos(docs, e.oracle_id)
        row = {"id": "r-" + hashlib.sha256(f"{e.item.id}\x00{e.item.question}".encode()).hexdigest()[:16],
               "question": e.item.question, "documents": docs, "oracle_position": p,
               "prompt": P.render_user(template, e.item.question, docs), "completion": e.target(p),
               "answer": list(e.item.answers), "answerable": e.item.answerable, "doc_id": e.item.doc_id}
        out.append((e, row, total))
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


def build_rows(cfg: RaftConfig, retriever: Any, tokenizer: Any, template: P.PromptTemplate,
               questions: list[tuple[str | None, QAItem]], counts: Counter) -> tuple[dict[str, list[dict]], dict[str, list[int]]]:
    """All rows by split, with their token counts; questions are searched ``batch_size`` at a time."""
    from tqdm.auto import tqdm

    teacher = None
    if cfg.teacher:
        from rag_pipeline.teacher import load_teacher

        teacher = load_teacher(cfg.teacher)
    store, n_chunks = retriever.store, len(retriever)
    counter = P.TokenEstimator(tokenizer, template)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    tokens: dict[str, list[int]] = {s: [] for s in SPLITS}
    for start in tqdm(range(0, len(questions), cfg.batch_size), desc="raft", unit="batch", disable=None):
        batch = questions[start : start + cfg.batch_size]
        hits = retriever.search_batch([it.question for _, it in batch], cfg.top_k, cfg.hybrid)
        by_doc = store.chunks_of_docs({it.doc_id for _, it in batch if it.doc_id is not None})
        examples = [make_example(cfg, split, it, h, by_doc.get(it.doc_id) if it.doc_id is not None else None, store, n_chunks, teacher, counts)
                    for (split, it), h in zip(batch, hits)]
        for e, row, total in fit_batch(cfg, tokenizer, template, counter, [e for e in examples if e], counts):
            split = e.split or split_of(e.group, cfg.seed, cfg.split_ratio)
            rows[split].append(row)
            tokens[split].append(total)
    return rows, tokens


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def features() -> Any:
    from datasets import Features, List, Value

    doc = {"id": Value("string"), "title": Value("string"), "text": Value("string")}
    return Features({"id": Value("string"), "question": Value("string"), "documents": List(doc), "oracle_position": Value("int32"),
                     "prompt": Value("string"), "completion": Value("string"), "answer": List(Value("string")),
                     "answerable": Value("bool"), "doc_id": Value("string")})


def export_row(fmt: str, row: dict, template: P.PromptTemplate, model_text: Callable[[str], str], cot: str) -> dict:
    """One row in an export format (see the module docstring)."""
    if fmt == "chat":
        return {"id": row["id"], "messages": [{"role": "system", "content": template.system},
                                              {"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["completion"]}]}
    if fmt == "completion":  # the exact text the generator sees (chat template applied), then the target
        return {"id": row["id"], "prompt": model_text(row["prompt"]), "completion": row["completion"]}
    if fmt == "eval":
        return {"id": row["id"], "question": row["question"], "answer": row["answer"], "doc_id": row["doc_id"], "answerable": row["answerable"]}
    docs, p = row["documents"], row["oracle_position"]
    return {"id": row["id"], "type": "general", "question": row["question"],
            "context": {"title": [[d["title"] for d in docs]], "sentences": [[d["text"] for d in docs]]},
            "oracle_context": docs[p]["text"] if p >= 0 else "", "cot_answer": cot,
            "instruction": "".join(f"<DOCUMENT>{d['text']}</DOCUMENT>\n" for d in docs) + row["question"]}


def cot_of(row: dict) -> str:
    """RAFT's ``cot_answer`` for the raft export, whatever the answer style: quote + ``<ANSWER>:``."""
    from rag_pipeline.teacher import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

    if not row["answerable"] or row["completion"] == P.ABSTAIN:
        return f"{ANSWER_TAG} {P.ABSTAIN}"
    p, answer = row["oracle_position"], row["answer"][0]
    if p < 0:
        return f"{ANSWER_TAG} {answer}"
    text = row["documents"][p]["text"]
    span = P.answer_sentence_span(text, row["answer"])
    answer = next((a for a in row["answer"] if contains_answer(text, [a])), answer)
    quote = text[span[0] : span[1]] if span else text
    return f"Document [{p + 1}] says: {BEGIN_QUOTE}{quote}{END_QUOTE}\n{ANSWER_TAG} {answer}"


def fingerprint(root: Path) -> str:
    """sha256 over the relative paths and bytes of every JSONL file under ``root``, sorted."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jsonl")):
        h.update(f"{p.relative_to(root).as_posix()}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def write_output(cfg: RaftConfig, rows: dict[str, list[dict]], template: P.PromptTemplate, model_text: Callable[[str], str],
                 manifest: dict) -> dict:
    """Write dataset/, jsonl/, exports/ and manifest.json into ``cfg.output`` atomically."""
    from datasets import Dataset, DatasetDict, NamedSplit

    from rag_pipeline.atomic import atomic_dir, write_json

    with atomic_dir(cfg.output, ARTIFACT) as tmp:
        parts = {}
        for s in SPLITS:
            write_jsonl(tmp / "jsonl" / f"{s}.jsonl", rows[s])
            ds = Dataset.from_list(rows[s], features=features()) if rows[s] else Dataset.from_dict({c: [] for c in COLUMNS}, features=features())
            # A content fingerprint instead of datasets' random one keeps dataset/ byte-identical too.
            fp = hashlib.sha256((tmp / "jsonl" / f"{s}.jsonl").read_bytes()).hexdigest()[:16]
            parts[s] = Dataset(ds.data, info=ds.info, split=NamedSplit(s), fingerprint=fp)
        # An empty split gets one (empty) shard: with zero shards datasets cannot load it back.
        DatasetDict(parts).save_to_disk(str(tmp / "dataset"), num_shards={s: 1 for s in SPLITS if not rows[s]})
        for fmt in cfg.format:
            for s in SPLITS:
                write_jsonl(tmp / "exports" / fmt / f"{s}.jsonl", [export_row(fmt, r, template, model_text, cot_of(r) if fmt == "raft" else "") for r in rows[s]])
        manifest = {**manifest, "fingerprint": fingerprint(tmp)}
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def load_tokenizer(generator: str) -> Any:
    """The generator's fast tokenizer, resolved offline."""
    from transformers import AutoTokenizer

    from rag_pipeline.model_paths import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(generator)))
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"the tokenizer of {generator} is not a fast tokenizer: the budget fitter needs one (a tokenizer.json); pick another --generator")
    return tok


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


def run(cfg: RaftConfig) -> dict:
    """Build the RAFT dataset; returns the manifest plus ``stats`` and ``seconds``.

    Raises:
        InputError: no questions, an index smaller than num_distractors + 1, or no example built.
        IndexError_: the index is missing, corrupt, or was built with another embedder than ``--embedder``.
    """
    from rag_pipeline.retriever import Retriever

    t0 = time.perf_counter()
    if not (cfg.qa or cfg.qa_dir or cfg.generate_questions):
        raise InputError("no questions: pass --qa FILE.jsonl, --qa-dir FOLDER (train/dev/test.jsonl) or --generate-questions N --question-generator ...")
    check_separate([*cfg.qa, *([cfg.qa_dir] if cfg.qa_dir else []), cfg.index], cfg.output)
    prepare_target(cfg.output, ARTIFACT)
    template = P.get_template(cfg.template)
    retriever = Retriever.load(cfg.index, device=cfg.device, expect_embedder=cfg.embedder or None)
    if len(retriever) < cfg.num_distractors + 2:
        raise InputError(f"index {cfg.index} holds {len(retriever)} chunks, too few for an oracle and {cfg.num_distractors} distractors "
                         f"(+1 when the oracle is left out): index more text or lower --num-distractors to {max(0, len(retriever) - 2)}")
    counts: Counter = Counter()
    questions = load_questions(cfg, counts) if (cfg.qa or cfg.qa_dir) else generated_questions(cfg, retriever.store)
    tokenizer = load_tokenizer(cfg.generator)
    rows, tokens = build_rows(cfg, retriever, tokenizer, template, questions, counts)
    if not any(rows.values()):
        raise InputError(f"no example was built from {len(questions)} questions (counts: {dict(sorted(counts.items()))}): check that the QA file matches the index")
    stats = summarize(rows, tokens)
    params = {k: v for k, v in to_dict(cfg).items() if k != "output"}  # the output path is where the manifest lives
    manifest = {"kind": "raft-dataset", "template": template.name, "template_text": P.template_text(template), "seed": cfg.seed, "params": params,
                "index": {"path": cfg.index, "fingerprint": retriever.manifest["corpus"]["fingerprint"], "embedder": retriever.manifest["embedder"]["id"]},
                "generator_tokenizer": cfg.generator, "columns": list(COLUMNS), "splits": list(SPLITS),
                "counts": {"questions": len(questions), **{f"examples_{s}": stats[s]["examples"] for s in SPLITS}, **dict(sorted(counts.items()))},
                "stats": stats, "empty_splits": [s for s in SPLITS if not rows[s]]}
    manifest = write_output(cfg, rows, template, P.model_text_fn(tokenizer, template), manifest)
    return {**manifest, "seconds": round(time.perf_counter() - t0, 2)}


# What an empty split means downstream, and how to get one.
EMPTY_SPLIT_FIX = {
    "train": "train-generator cannot use this dataset; give training questions (train.jsonl, or a file split by --split-ratio)",
    "validation": "train-generator will train without evaluation or best-checkpoint selection; add dev.jsonl to --qa-dir, "
                  "or use more questions or a larger validation share in --split-ratio",
    "test": "nothing is held out for testing (train-generator does not need it); add test.jsonl to --qa-dir if you want one",
}


def format_table(result: dict) -> str:
    """The stats table printed at the end of a build, with a warning line per empty split."""
    st, c = result["stats"], result["counts"]
    lines = [f"{'split':<11}{'examples':>9}{'oracle':>8}{'abstain':>9}{'avg tok':>9}{'max tok':>9}"]
    for s in SPLITS:
        x = st[s]
        lines.append(f"{s:<11}{x['examples']:>9}{x['oracle_rate']:>8.1%}{x['abstain_rate']:>9.1%}{x['avg_tokens']:>9.1f}{x['max_tokens']:>9}")
    other = {k: v for k, v in c.items() if not k.startswith("examples_")}
    lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in other.items()))
    lines += [f"warning: split '{s}' is empty: {EMPTY_SPLIT_FIX[s]}" for s in result.get("empty_splits", [])]
    return "\n".join(lines)


def main(cfg: RaftConfig) -> int:
    """CLI entry: build, then print the stats table."""
    import datasets

    datasets.disable_progress_bars()  # one table at the end instead of a bar per split
    result = run(cfg)
    print(format_table(result))
    print(f"wrote {cfg.output} ({result['seconds']} s; template {result['template']}, fingerprint {result['fingerprint'][:12]})")
    return 0
