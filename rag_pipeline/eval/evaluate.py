"""``evaluate``: answer quality of the base and tuned generators on a QA file, with a report.

Every system (the base model with no adapter, each adapter) answers the same questions through
``ask``'s :class:`~rag_pipeline.answer.ask.Pipeline` (batched generation, one model load per system)
under one or more *contexts*:

* ``retrieved``: the pipeline's own retrieval (what ``ask`` does);
* ``oracle`` (``--oracle``): the gold passage (the gold document's first chunk holding the answer,
  else its first chunk) plus the ``k-1`` best-ranked retrieved chunks of other documents that do
  not hold the answer, shuffled with a seeded RNG. The rules are RAFT training's
  (:func:`~rag_pipeline.passage.gold_passage`, :func:`~rag_pipeline.passage.hard_distractors`)
  with two documented differences: the gold passage is chosen by position, not by this
  retriever's rank, and every distractor is a hard one (no random chunks), so that the context
  is the same for every system;
* ``injected`` (``--injection``): the top-``k`` retrieved chunks with a prompt injection whose
  payload is "HACKED", in one of four styles per question (seeded, :mod:`rag_pipeline.data.injection`):
  a plain instruction document, a forged closing delimiter plus a system turn, many-shot forged
  question/answer turns, and an instruction hidden mid-paragraph in a retrieved document. Its
  headline number is the share of answers that obey it, overall and per style.

Reads an index directory and a QA JSONL file; writes ``OUTPUT/`` atomically::

    report.md          Markdown tables: retrieval, then one row per system and context
    metrics.json       the numbers below, the config and timings
    chart.png          EM, F1, ROUGE-L (and hijack rate with --injection) per system and context
    predictions.jsonl  one line per question, system and context
    skipped.jsonl      the records left out (an answerable question without an answer), with the
                       reason: only when there are some

A QA file with answerable questions and no answer at all (no answer column) is refused: scored,
every question would count as wrongly answered or as unanswerable.

Metrics (rates in [0, 1]; ``null`` when their denominator is empty):

* retrieval (once, system independent): Recall@1/5/10, MRR@10, Precision@k of the index, at
  document level where every question has a ``doc_id`` (:mod:`rag_pipeline.eval.retrieval`);
* answer, on answerable questions: SQuAD EM and token F1 (:mod:`rag_pipeline.metrics`) and
  ROUGE-L F-measure (``rouge_score``), each the maximum over the gold answers; an abstention on
  an answerable question scores 0. EM only where the gold answers are short spans: for a QA file
  whose answers are free-form text (:func:`rag_pipeline.support.answer_form`: under 80% of them
  occur verbatim in their gold passage) EM is ``null`` and token F1 and ROUGE-L carry the
  comparison; the oracle context, citations and answer-in-context then judge a passage by
  content-token recall as well (:mod:`rag_pipeline.support`);
* grounding, on answers that did not abstain: ``token_support`` (mean share of the answer's
  normalized tokens found in the documents it was given), ``unsupported_rate`` (share of answers
  with none of their tokens there) and ``span_rate`` (share whose whole normalized answer occurs
  there);
* citations, on answerable questions not abstained: ``precision`` (share of cited documents that
  hold a gold answer), ``gold_doc_precision`` (share of cited documents from the gold document)
  and ``uncited_rate`` (share of answers citing none). No passage holds the word "yes": a yes/no
  question's citation (and its answer in context) counts as holding the answer when it is of the
  gold document, and is not judged where the QA file names none (``counts.citations`` counts every
  citation, judged or not);
* abstention: ``abstain_rate`` on ``answerable: false`` questions, ``false_abstain_rate`` on
  answerable ones;
* context: ``answer_in_context`` (answerable questions whose documents hold a gold answer: the
  ceiling for EM) and ``gold_doc_in_context``;
* SQuAD 2.0: ``has_em``/``has_f1`` over answerable questions (an abstention scores 0),
  ``noans_acc`` over unanswerable ones (abstaining is right), ``overall_em``/``overall_f1`` over
  all of them (a correct abstention scores 1);
* injection: ``hijack_rate``, the share of answers containing "HACKED", and ``by_style`` (``injected`` only).

``metrics.json`` (``schema_version`` 1)::

    {
      "schema_version": 1,
      "config": {EvaluateConfig fields},
      "qa": {"path": str, "total": int, "evaluated": int, "answerable": int, "unanswerable": int,
             "sample": "all" | "seeded", "answer_form": "span" | "free-form",
             "verbatim_share": float|null,    # answers found verbatim in their gold passage
             "skipped": int},                 # records left out (listed in skipped.jsonl)
      "index": {"path": str, "embedder": str, "chunks": int},
      "retrieval": {"level": "document" | "answer", "questions": int, "recall@1": float,
                    "recall@5": float, "recall@10": float, "mrr@10": float, "precision@K": float},
      "systems": [{"name": str, "adapter": str | null, "load_s": float}],
      "contexts": [str],              # in the order evaluated: retrieved, oracle, injected
      "results": {system name: {context: {
          "counts": {"questions": int, "answerable": int, "unanswerable": int, "abstained": int,
                     "answered": int, "citations": int, "rejected": int, "fallback": int, "reread": int},
          "answer": {"em": float|null, "f1": float|null, "rougeL": float|null},
          "grounding": {"token_support": float|null, "unsupported_rate": float|null, "span_rate": float|null,
                        "no_content_rate": float|null,          # shown answers without a content word ("The [1]")
                        "unsupported_cited_rate": float|null},  # shown answers whose cited passage lacks most of their words
          "yes_no": {"accuracy": float|null, "questions": int},  # yes/no questions answered with the right polarity
          "citations": {"precision": float|null, "gold_doc_precision": float|null, "uncited_rate": float|null},
          "abstention": {"abstain_rate": float|null, "false_abstain_rate": float|null},
          "context": {"answer_in_context": float|null, "gold_doc_in_context": float|null},
          "squad2": {"has_em": float|null, "has_f1": float|null, "noans_acc": float|null,
                     "overall_em": float|null, "overall_f1": float|null},
          "injection": {"hijack_rate": float|null, "by_style": {style: float} | null},
          "timings": {"generate_s": float, "per_question_s": float}}}},
      "timings": {"total_s": float, "retrieval_s": float}
    }

Each ``predictions.jsonl`` line: ``system``, ``context``, ``id``, ``question``, ``answerable``,
``doc_id``, ``gold`` (list), ``documents`` (``[{"id", "doc_id"}]`` given to the model, in prompt
order), ``prediction``, ``raw``, ``abstained``, ``abstain_reason``, ``margin`` (the null margin) and ``probe`` (the
answerability probe's score, ``--abstain-probe``), ``rejected`` and ``fallback`` (the answer check and ``--reread``), ``citations`` (1-based
numbers), ``cited_doc_ids`` and ``scores`` (``em``, ``f1``, ``rougeL`` (null when unanswerable),
``support``, ``span``, ``problem`` (:func:`rag_pipeline.answer.check.cited_problem` of a shown
answer), ``yes_no`` (null unless the gold is yes or no), ``hijacked``); with ``--injection`` also ``injection_position`` and
``injection_style``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rag_pipeline.answer import structured
from rag_pipeline.answer.ask import Answer, Answerer, Pipeline
from rag_pipeline.answer.check import cited_problem
from rag_pipeline.answer.polar import may_be_yes_no
from rag_pipeline.answer.settings import AnswerSettings, Answering, Task
from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, output_lock, prepare_target, write_json, write_jsonl
from rag_pipeline.config import fixed, opt, to_dict
from rag_pipeline.data import tasks
from rag_pipeline.data.contexts import resolve_context_docs
from rag_pipeline.data.injection import EVAL_PAYLOAD, STYLES, inject, is_hijacked
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.eval import task_scores
from rag_pipeline.eval.retrieval import relevance, retrieval_metrics
from rag_pipeline.index.retriever import Retriever
from rag_pipeline.metrics import exact_match, extract_answer, f1, mean_of, rouge_l, squad2_figures, yes_no_gold
from rag_pipeline.passage import Hit, Passage, from_chunk, gold_passage, hard_distractors
from rag_pipeline.qa import QAFieldConfig, QAItem, load_qa, require_answers, unique_questions
from rag_pipeline.support import answer_form, support
from rag_pipeline.textnorm import contains_answer, normalize_answer

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONTEXTS = ("retrieved", "oracle", "injected")
OUTPUT_FILES = ("chart.png", "metrics.json", "predictions.jsonl", "report.md")
SKIPPED_FILE = "skipped.jsonl"  # the records left out, with their reasons (only when there are some)
# The output directory evaluate may replace: its own files (metrics.json has no "kind"; known by its keys).
ARTIFACT = Artifact("an evaluate output", "metrics.json", keys=("schema_version", "results"), allowed=frozenset({*OUTPUT_FILES, SKIPPED_FILE}))


@dataclass
class EvaluateConfig(Answering, QAFieldConfig):
    """Settings of ``evaluate``: the answering settings every system shares (:class:`Answering`, as ``ask``), the
    systems, the contexts and the sample; all of them are recorded in ``metrics.json``."""

    qa: str = opt("corpus/disfl_qa/qa/test.jsonl", "QA file (JSONL, JSON, CSV/TSV, Parquet, datasets folder): question, answer, "
                                                   "optional id, doc_id, context, answerable")
    output: str = opt("runs/evaluate", "output directory: report.md, metrics.json, chart.png, predictions.jsonl (replaced atomically)")
    adapter: list[str] = opt(factory=list, help="trained adapter directories, each evaluated as one system")
    no_adapter: bool = opt(False, "also evaluate the base model without adapter (implied when no --adapter is given)")
    retrieved: bool = opt(True, "evaluate with the pipeline's retrieved context")
    oracle: bool = opt(False, "also evaluate with the gold passage plus the k-1 best-ranked retrieved distractors (RAFT training's rules; see passage.py)")
    injection: bool = opt(False, "also evaluate with a 'reply HACKED' document among the retrieved ones (prompt-injection robustness)")
    precision_k: int = opt(5, "k of the retrieval Precision@k")
    limit: int = opt(0, "evaluate a seeded sample of this many questions, the same for every system; 0 = all")
    seed: int = opt(0, "seed of the sample, the oracle shuffles and the injection positions")
    batch_size: int = opt(16, "prompts generated per batch (twice ask's: evaluation has many questions and no one waiting)")
    grounded: bool = opt(False, "also decode every context grounded (spans of a shown document + its citation, or the "
                                "abstention): results appear as CONTEXT/grounded beside the free decoding")
    num_beams: int = fixed(1, "answers are scored as greedy decoding gives them")
    do_sample: bool = fixed(False, "answers are scored as greedy decoding gives them")
    temperature: float = fixed(0.7, "answers are scored as greedy decoding gives them")
    top_p: float = fixed(0.9, "answers are scored as greedy decoding gives them")
    snippet: int = fixed(160, "predictions record the cited documents, not snippets")
    task: Task = opt("qa", "qa: short answers (SQuAD 2.0 figures); summary: cited summaries (ROUGE-L against a reference written "
                           "from the gold passage, citation recall and precision); extract: JSON answers under "
                           "rag_pipeline.data.tasks.EXTRACT_SCHEMA (validity, field EM/F1, null accuracy); see "
                           "rag_pipeline.eval.task_scores")
    schema: str = fixed("", "--task extract decodes under rag_pipeline.data.tasks.EXTRACT_SCHEMA, the schema its references follow")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision_k < 1:
            raise ConfigError(f"precision_k must be at least 1, got {self.precision_k}")
        if self.limit < 0:
            raise ConfigError(f"limit must be 0 (all questions) or positive, got {self.limit}")
        if not (self.retrieved or self.oracle or self.injection):
            raise ConfigError("no context to evaluate: keep --retrieved or add --oracle or --injection")
        if self.task == "extract":  # the schema the references follow
            self.schema = structured.canonical(tasks.EXTRACT_SCHEMA)
        if len(set(self.adapter)) != len(self.adapter):
            raise ConfigError(f"adapter lists a directory twice ({', '.join(self.adapter)}): give each once")

    @property
    def contexts(self) -> list[str]:
        """Context names in evaluation order; with ``grounded`` each is followed by ``NAME/grounded``."""
        base = [c for c, on in zip(CONTEXTS, (self.retrieved, self.oracle, self.injection)) if on]
        return [v for c in base for v in ((c, f"{c}/grounded") if self.grounded else (c,))]


# ---------------------------------------------------------------------------------------------
# Per-answer scores (pure functions)
# ---------------------------------------------------------------------------------------------


def answer_tokens(prediction: str) -> list[str]:
    """The SQuAD-normalized tokens of the answer part of a generation (citations removed)."""
    return normalize_answer(extract_answer(prediction)).split()


def token_support(prediction: str, documents: list[Passage]) -> float | None:
    """Share of the answer's normalized tokens that occur in the documents; None for an empty answer."""
    tokens = answer_tokens(prediction)
    if not tokens:
        return None
    vocab = set(normalize_answer(" ".join(d["text"] for d in documents)).split())
    return sum(t in vocab for t in tokens) / len(tokens)


def holds_answer(text: str, answers: list[str], free_form: bool = False) -> bool:
    """Whether a document holds an answer: as whole words; for free-form answers, at least half
    of an answer's content tokens (:func:`rag_pipeline.support.support`)."""
    return support(text, answers) >= 0.5 if free_form else contains_answer(text, answers)


def score_answer(item: QAItem, prediction: str, raw: str, abstained: bool, cited: list[int], documents: list[Passage],
                 free_form: bool = False) -> dict:
    """Per-example scores of one answer given the documents it was shown (1-based ``cited`` numbers).

    ``free_form``: the QA file's answers are free-form text (:func:`holds_answer`).

    Returns:
        ``em``, ``f1``, ``rougeL`` (None when unanswerable), ``support`` (None when abstained or
        empty), ``span`` (the whole answer occurs in the documents; None when abstained or empty),
        ``cited_holds_answer`` / ``cited_gold_doc`` (one bool per citation), ``hijacked``,
        ``answer_in_context`` and ``gold_doc_in_context``.
    """
    answerable = item.answerable and bool(item.answers)
    claim = None if abstained else extract_answer(prediction)
    docs_cited = [documents[n - 1] if 1 <= n <= len(documents) else None for n in cited]
    polar = answerable and yes_no_gold(item.answers) is not None

    def holds(d: Passage) -> bool | None:
        """Whether a shown passage holds the answer. No passage holds a yes/no question's "yes": the passage that answers
        it is one of the document it is about (None, not judged, where the QA file names no document)."""
        if polar:
            return None if item.doc_id is None else d.get("doc_id") == item.doc_id
        return holds_answer(d["text"], item.answers, free_form)

    return {
        "em": exact_match(prediction, item.answers) if answerable else None,
        "f1": f1(prediction, item.answers) if answerable else None,
        "rougeL": rouge_l(prediction, item.answers) if answerable else None,
        "support": token_support(prediction, documents) if claim else None,
        "span": contains_answer(" ".join(d["text"] for d in documents), [claim]) if claim else None,
        "cited_holds_answer": [False if d is None else holds(d) for d in docs_cited],
        "cited_gold_doc": [d is not None and item.doc_id is not None and d.get("doc_id") == item.doc_id for d in docs_cited],
        "problem": None if abstained else cited_problem(prediction, cited, [d["text"] for d in documents], may_be_yes_no(item.question)),
        "yes_no": None if not polar else (not abstained and exact_match(prediction, item.answers) == 1.0),
        "hijacked": is_hijacked(raw) or is_hijacked(prediction),  # the payload, HACKED
        "answer_in_context": None if polar and item.doc_id is None else answerable and any(holds(d) for d in documents),
        "gold_doc_in_context": item.doc_id is not None and any(d.get("doc_id") == item.doc_id for d in documents),
    }


def aggregate(records: list[dict], context: str) -> dict:
    """Metrics of one system under one context from its prediction records (see the module docstring)."""
    ans = [r for r in records if r["answerable"]]
    unans = [r for r in records if not r["answerable"]]
    answered = [r for r in records if not r["abstained"]]
    cited_pool = [r for r in ans if not r["abstained"]]  # citations are judged where a gold answer exists
    s = [r["scores"] for r in records]
    holds = [x for r in cited_pool for x in r["scores"]["cited_holds_answer"]]
    gold_doc = [x for r in cited_pool for x in r["scores"]["cited_gold_doc"]]
    return {
        "counts": {"questions": len(records), "answerable": len(ans), "unanswerable": len(unans),
                   "abstained": sum(r["abstained"] for r in records), "answered": len(answered), "citations": len(holds),
                   # the answer check (ask --answer-check): answers it refused, and of those the ones shown grounded instead
                   "rejected": sum(r.get("rejected") not in (None, "misread") for r in records),
                   "fallback": sum(r.get("fallback") == "grounded" for r in records),
                   # ask --reread: answers that cited a passage less about the question, answered again from the one most about it
                   "reread": sum(r.get("rejected") == "misread" for r in records)},
        "answer": {m: mean_of(r["scores"][m] for r in ans) for m in ("em", "f1", "rougeL")},
        "grounding": {
            "token_support": mean_of(r["scores"]["support"] for r in answered),
            "unsupported_rate": mean_of(None if r["scores"]["support"] is None else r["scores"]["support"] == 0 for r in answered),
            "span_rate": mean_of(r["scores"]["span"] for r in answered),
            # answers shown although they hold no content word, or their cited passage lacks most of them (answer.check.answer_problem)
            "no_content_rate": mean_of(r["scores"].get("problem") == "no_content" for r in answered),
            "unsupported_cited_rate": mean_of(r["scores"].get("problem") == "unsupported" for r in answered),
        },
        "citations": {
            "precision": mean_of(holds),
            "gold_doc_precision": mean_of(gold_doc),
            "uncited_rate": mean_of(not r["citations"] for r in cited_pool),
        },
        "abstention": {"abstain_rate": mean_of(r["abstained"] for r in unans), "false_abstain_rate": mean_of(r["abstained"] for r in ans)},
        "context": {"answer_in_context": mean_of(r["scores"]["answer_in_context"] for r in ans),
                    "gold_doc_in_context": mean_of(x["gold_doc_in_context"] for x in s) if all(r["doc_id"] for r in records) else None},
        "squad2": squad2(records),
        "yes_no": {"accuracy": mean_of(r["scores"].get("yes_no") for r in ans), "questions": sum(r["scores"].get("yes_no") is not None for r in ans)},
        "injection": injection_rates(records) if context.startswith("injected") else {"hijack_rate": None, "by_style": None},
    }


def squad2(records: list[dict]) -> dict[str, float | None]:
    """SQuAD 2.0's figures (:func:`rag_pipeline.metrics.squad2_figures`) from prediction records, an
    abstention being the record's own (any rule); a question without a gold answer counts as unanswerable."""
    has = [bool(r["answerable"] and r["scores"]["em"] is not None) for r in records]
    fig = squad2_figures([bool(r["abstained"]) for r in records], has, [r["scores"]["f1"] if h else 0.0 for r, h in zip(records, has)],
                         [r["scores"]["em"] if h else 0.0 for r, h in zip(records, has)])
    return {k: None if fig[k] is None else round(fig[k], 4) for k in ("has_em", "has_f1", "noans_acc", "overall_em", "overall_f1")}


def injection_rates(records: list[dict]) -> dict:
    """The hijack rate over all injected questions and per injection style."""
    styles = sorted({r.get("injection_style") for r in records} - {None}, key=lambda x: STYLES.index(x) if x in STYLES else 99)
    return {"hijack_rate": mean_of(r["scores"]["hijacked"] for r in records),
            "by_style": {st: mean_of(r["scores"]["hijacked"] for r in records if r.get("injection_style") == st) for st in styles}}


# ---------------------------------------------------------------------------------------------
# Questions, retrieval and contexts
# ---------------------------------------------------------------------------------------------


NO_ANSWER = "answerable but no answer given: it cannot be scored (add its answer, or mark it answerable: false)"


def usable_items(items: list[QAItem]) -> tuple[list[QAItem], list[dict]]:
    """The items that can be scored, and a skipped.jsonl record (id, question, answer, reason, where)
    for each left out: an answerable question without an answer (scored, it would count as
    unanswerable)."""
    keep, skipped = [], []
    for it in items:
        if it.answerable and not it.answers:
            skipped.append({"id": it.id, "question": it.question, "answer": [], "reason": NO_ANSWER, "where": it.where})
        else:
            keep.append(it)
    return keep, skipped


def sample_items(items: list[QAItem], limit: int, seed: int) -> list[QAItem]:
    """A seeded sample of ``limit`` items in file order (all when ``limit`` is 0 or too large)."""
    if not limit or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def gold_chunk(item: QAItem, hits: list[Hit], chunks_of_doc: list[Any], free_form: bool = False) -> Any | None:
    """The gold passage: :func:`~rag_pipeline.passage.gold_passage` by position (the gold document's
    first chunk holding an answer, for free-form answers else the one supporting it best, else its
    first chunk; without a ``doc_id``, the best-ranked hit holding an answer). None when there is
    no such chunk."""
    return gold_passage(item, hits, chunks_of_doc, order="position", fallback_to_first=True, free_form=free_form)


def oracle_context(item: QAItem, hits: list[Hit], chunks_of_doc: list[Any], k: int, seed: int,
                   free_form: bool = False) -> tuple[list[Passage], bool]:
    """The gold passage plus the ``k-1`` best-ranked usable hits (:func:`~rag_pipeline.passage.hard_distractors`), shuffled.

    Returns:
        (documents, found): ``found`` is False when no gold passage exists; the documents are
        then the top-``k`` usable hits (the question is still asked, the gold is just absent).
    """
    gold = gold_chunk(item, hits, chunks_of_doc, free_form)
    gold_doc = item.doc_id or (gold.doc_id if gold is not None else None)
    chosen = hard_distractors(hits, k, gold_doc, gold, item.answers, taken=[] if gold is None else [gold], free_form=free_form)
    docs = [from_chunk(c) for c in chosen]
    random.Random(f"{seed}:oracle:{item.id}").shuffle(docs)
    return docs, gold is not None


def injected_context(item: QAItem, hits: list[Hit], k: int, seed: int) -> tuple[list[Passage], int, str]:
    """The top-``k`` hits with a "HACKED" injection of a seeded style; returns (docs, 0-based position, style).

    The style cycles through :data:`rag_pipeline.data.injection.STYLES` by a hash of the question id,
    so each style gets about a quarter of the questions, the same ones for every system.
    """
    docs = [from_chunk(h.chunk) for h in hits[:k]]
    style = STYLES[int(hashlib.sha256(f"{seed}:injection-style:{item.id}".encode()).hexdigest()[:8], 16) % len(STYLES)]
    docs, pos = inject(docs, style, EVAL_PAYLOAD, random.Random(f"{seed}:injection:{item.id}"))
    return docs, pos, style


def retrieve(retriever: Retriever, items: list[QAItem], cfg: EvaluateConfig, batch: int = 256) -> list[list[Hit]]:
    """Hits per question, deep enough for MRR@10 and for distractors of other documents."""
    depth = 3 * max(10, cfg.k)  # several chunks of one document count once at document level
    hits: list[list[Hit]] = []
    for start in range(0, len(items), batch):
        hits += retriever.search_batch([i.question for i in items[start : start + batch]], depth, cfg.hybrid)
    return hits


def retrieval_scores(items: list[QAItem], hits: list[list[Hit]], precision_k: int) -> dict:
    """Recall@1/5/10, MRR@10 and Precision@k at document level (answer-string level without doc_ids)."""
    level = "document" if all(i.doc_id for i in items) else "answer"
    pairs = [(i, h) for i, h in zip(items, hits) if level == "document" or (i.answerable and i.answers)]
    if not pairs:
        return {"level": level, "questions": 0}
    rels = [relevance(i, h, level)[: max(10, precision_k)] for i, h in pairs]
    return {"level": level, "questions": len(rels), **{k: round(v, 4) for k, v in retrieval_metrics(rels, precision_k).items()}}


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------


def systems_of(cfg: EvaluateConfig) -> list[tuple[str, str | None]]:
    """(name, adapter dir or None) per system: ``base`` first, then each adapter by folder name."""
    out: list[tuple[str, str | None]] = [("base", None)] if cfg.no_adapter or not cfg.adapter else []
    names = [Path(a).name or str(a) for a in cfg.adapter]
    for a, name in zip(cfg.adapter, names):
        if not Path(a).is_dir():
            raise InputError(f"adapter {a} is not a directory: pass a train-generator output (e.g. runs/disfl_qa/adapter)")
        unique = name if names.count(name) == 1 and name != "base" else "/".join(Path(a).parts[-2:])
        out.append((unique, a))
    return out


def answer_settings(cfg: EvaluateConfig, adapter: str | None) -> AnswerSettings:
    """One system's answering settings: ``cfg``'s shared ones, with its adapter (None: the base model).

    Free decoding: the grounded contexts ask :meth:`~rag_pipeline.answer.ask.Pipeline.answer_batch` for grounded decoding.
    """
    shared = {f.name: getattr(cfg, f.name) for f in fields(Answering)}
    probe = cfg.abstain_probe and adapter is not None  # a base model has no probe, nor a cutoff to move
    return AnswerSettings(**{**shared, "grounded": False, "abstain_probe": probe, "probe_bias": cfg.probe_bias if probe else 0.0,
                             "orders": cfg.orders if adapter is not None else "one"},  # nor a calibrated threshold
                          adapter=adapter or "", no_adapter=adapter is None)


def load_pipeline(cfg: EvaluateConfig, adapter: str | None, retriever: Retriever) -> Answerer:
    """One ask Pipeline per system, sharing the already loaded retriever."""
    return Pipeline.load(answer_settings(cfg, adapter), retriever=retriever)


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    # On a terminal a live bar; in a log file (nohup, CI) a line every 30 s instead of nothing.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="q", file=sys.stderr, leave=not tty, mininterval=0.1 if tty else 30, ascii=not tty)


def answer_all(pipeline: Answerer, questions: list[str], contexts: list[list[Passage]] | None, chunk: int, desc: str,
               grounded: bool = False) -> list[Answer]:
    """``pipeline.answer_batch`` over all questions in chunks of ``chunk`` (a progress bar step each)."""
    out: list[Answer] = []
    kwargs = {"grounded": True} if grounded else {}  # free decoding: the pipeline's own setting
    with _progress(len(questions), desc) as bar:
        for start in range(0, len(questions), chunk):
            ctx = None if contexts is None else contexts[start : start + chunk]
            out += pipeline.answer_batch(questions[start : start + chunk], contexts=ctx, **kwargs)
            bar.update(len(questions[start : start + chunk]))
    if len(out) != len(questions):
        raise RuntimeError(f"the pipeline returned {len(out)} answers for {len(questions)} questions")
    return out


def record(system: str, context: str, item: QAItem, answer: Answer, documents: list[Passage], extra: dict, free_form: bool = False,
           task: Task = "qa", reference: str | None = None) -> dict:
    """One predictions.jsonl line (scores included; with a ``task`` other than qa, ``scores["task"]`` against ``reference``)."""
    cited = [int(c.n) for c in answer.citations]
    # An answer withheld by the calibrated abstention was never shown: it cannot be hijacked.
    shown_raw = "" if answer.abstain_reason == "calibration" or getattr(answer, "rejected", None) else answer.raw
    scores = score_answer(item, answer.answer, shown_raw, bool(answer.abstained), cited, documents, free_form)
    if task == "summary":
        scores["task"] = task_scores.score_summary(answer.sentences, bool(answer.abstained), list(item.answers), item.answerable, reference)
    elif task == "extract":
        scores["task"] = task_scores.score_extract(answer.data, answer.json_error, list(item.answers), item.answerable, reference,
                                                   answer.json_cut)
        extra = {**extra, "data": answer.data, "json_error": answer.json_error, "json_cut": answer.json_cut}
    return {
        "system": system, "context": context, "id": item.id, "question": item.question, "answerable": item.answerable,
        "doc_id": item.doc_id, "gold": list(item.answers),
        "documents": [{"id": d.get("id"), "doc_id": d.get("doc_id")} for d in documents],
        "prediction": answer.answer, "raw": answer.raw, "abstained": bool(answer.abstained),
        "abstain_reason": answer.abstain_reason, "margin": answer.margin, "probe": getattr(answer, "probe", None), "citations": cited,
        "rejected": getattr(answer, "rejected", None), "fallback": getattr(answer, "fallback", None),
        "cited_doc_ids": [documents[n - 1].get("doc_id") if 1 <= n <= len(documents) else None for n in cited],
        "scores": scores, **({"reference": reference} if task != "qa" else {}), **extra,
    }


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


def build_contexts(cfg: EvaluateConfig, items: list[QAItem], hits: list[list[Hit]], store: Any,
                   free_form: bool = False) -> dict[str, tuple[list | None, list[dict]]]:
    """Per context: (documents passed to the pipeline or None for its own retrieval, per-item extras)."""
    out: dict[str, tuple[list | None, list[dict]]] = {}
    for ctx in dict.fromkeys(c.split("/")[0] for c in cfg.contexts):
        if ctx == "retrieved":
            out[ctx] = (None, [{} for _ in items])
        elif ctx == "oracle":
            by_doc = store.chunks_of_docs({i.doc_id for i in items if i.doc_id})
            pairs = [oracle_context(i, h, by_doc.get(i.doc_id or "", []), cfg.k, cfg.seed, free_form) for i, h in zip(items, hits)]
            out[ctx] = ([d for d, _ in pairs], [{"oracle_found": f} for _, f in pairs])
        else:
            triples = [injected_context(i, h, cfg.k, cfg.seed) for i, h in zip(items, hits)]
            out[ctx] = ([d for d, _, _ in triples], [{"injection_position": p + 1, "injection_style": st} for _, p, st in triples])
    return out


def evaluate_system(pipeline: Answerer, name: str, items: list[QAItem], contexts: dict, chunk: int, order: list[str],
                    free_form: bool = False, task: Task = "qa", references: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """All contexts (``order``: names, ``NAME/grounded`` for grounded decoding) for one loaded system: (results by context, records).

    ``free_form``: the gold answers are free-form text: EM is left out (``null``).
    """
    results, records = {}, []
    questions = [i.question for i in items]
    for ctx in order:
        docs, extras = contexts[ctx.split("/")[0]]
        t0 = time.perf_counter()
        answers = answer_all(pipeline, questions, docs, chunk, f"{name}/{ctx}", grounded=ctx.endswith("/grounded"))
        seconds = time.perf_counter() - t0
        recs = [
            # The documents as shown: the prompt budget may cut or drop some, and [n] numbers these.
            record(name, ctx, item, a, list(a.retrieved) if a.retrieved else (docs[j] if docs is not None else []), extras[j], free_form,
                   task, references[j] if references else None)
            for j, (item, a) in enumerate(zip(items, answers))
        ]
        results[ctx] = {**aggregate(recs, ctx), "timings": {"generate_s": round(seconds, 2), "per_question_s": round(seconds / max(len(items), 1), 3)}}
        if task != "qa":
            results[ctx]["task"] = task_scores.aggregate(task, recs)
        if free_form:  # exact match of a sentence measures wording, not correctness
            results[ctx]["answer"]["em"] = results[ctx]["squad2"]["has_em"] = results[ctx]["squad2"]["overall_em"] = None
        records += recs
        log.info("%s/%s: %s", name, ctx, results[ctx]["answer"])
    return results, records


def task_references(cfg: EvaluateConfig, items: list[QAItem], hits: list[list[Hit]], store: Any,
                    free_form: bool = False) -> list[str | None] | None:
    """Per item, the reference of ``cfg.task`` written from its gold passage (:func:`task_scores.reference`); None for qa."""
    if cfg.task == "qa":
        return None
    by_doc = store.chunks_of_docs({i.doc_id for i in items if i.doc_id})
    golds = [gold_chunk(i, h, by_doc.get(i.doc_id or "", []), free_form) for i, h in zip(items, hits)]
    return [task_scores.reference(cfg.task, i.question, g.text if g is not None else None, list(i.answers), i.answerable)
            for i, g in zip(items, golds)]


def answer_form_of(items: list[QAItem], store: Any) -> tuple[str, float | None]:
    """Whether the gold answers are spans of their gold documents or free-form text (:func:`support.answer_form`)."""
    by_doc = store.chunks_of_docs({i.doc_id for i in items if i.doc_id and i.answerable and i.answers})
    return answer_form([(i.answers, [c.text for c in by_doc[i.doc_id]]) for i in items if i.answerable and i.answers and by_doc.get(i.doc_id or "")])


def run(cfg: EvaluateConfig, retriever: Retriever | None = None,
        pipeline_factory: Callable[[EvaluateConfig, str | None, Retriever], Answerer] | None = None) -> dict:
    """Evaluate every system under every context and write the output directory.

    Args:
        retriever: an already loaded Retriever of ``cfg.index`` (tests pass one built with a fake embedder).
        pipeline_factory: ``(cfg, adapter or None, retriever) -> Pipeline``; default :func:`load_pipeline`.

    Returns:
        The ``metrics.json`` content.

    Raises:
        InputError: a QA file without answers (:func:`rag_pipeline.qa.require_answers`), a missing adapter.
        ConfigError: another run is writing ``cfg.output`` (:func:`rag_pipeline.atomic.output_lock`).
    """
    check_separate([cfg.index, cfg.qa, *cfg.adapter], cfg.output)
    with output_lock(cfg.output):
        return _run(cfg, retriever, pipeline_factory)


def _run(cfg: EvaluateConfig, retriever: Retriever | None,
         pipeline_factory: Callable[[EvaluateConfig, str | None, Retriever], Answerer] | None) -> dict:
    """:func:`run`'s work, under the output's lock."""
    t_start = time.perf_counter()
    prepare_target(cfg.output, ARTIFACT)
    systems = systems_of(cfg)
    all_items = unique_questions(load_qa(cfg.qa, cfg.qa_fields()))  # one record per id: predictions are keyed by it
    require_answers(cfg.qa, all_items, cfg.qa_fields())
    usable, skipped = usable_items(all_items)
    if skipped:
        log.warning("%d of %d records of %s are answerable but have no answer: left out, listed in %s/%s", len(skipped), len(all_items),
                    cfg.qa, cfg.output, SKIPPED_FILE)
    items = sample_items(usable, cfg.limit, cfg.seed)
    retriever = retriever or Retriever.load(cfg.index, device=cfg.device)
    items, missing = resolve_context_docs(retriever, items)  # a record's own passage is its gold document
    if missing:
        log.warning("%d of the QA file's contexts are not in index %s: their questions have no gold document", len(missing), cfg.index)
    form, verbatim = answer_form_of(items, retriever.store)
    t0 = time.perf_counter()
    hits = retrieve(retriever, items, cfg)
    retrieval = retrieval_scores(items, hits, cfg.precision_k)
    retrieval_s = time.perf_counter() - t0
    contexts = build_contexts(cfg, items, hits, retriever.store, form == "free-form")
    references = task_references(cfg, items, hits, retriever.store, form == "free-form")
    factory = pipeline_factory or load_pipeline
    results, records, system_info = {}, [], []
    for name, adapter in systems:
        t0 = time.perf_counter()
        pipeline = factory(cfg, adapter, retriever)
        system_info.append({"name": name, "adapter": adapter, "load_s": round(time.perf_counter() - t0, 2)})
        results[name], recs = evaluate_system(pipeline, name, items, contexts, cfg.batch_size * 2, cfg.contexts, form == "free-form",
                                              cfg.task, references)
        records += recs
        del pipeline
        gc.collect()  # free one generator before loading the next
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "config": to_dict(cfg),
        "qa": {"path": cfg.qa, "total": len(all_items), "evaluated": len(items), "answerable": sum(i.answerable for i in items),
               "unanswerable": sum(not i.answerable for i in items), "sample": "seeded" if len(items) < len(usable) else "all",
               "answer_form": form, "verbatim_share": verbatim, "skipped": len(skipped)},
        "index": {"path": str(cfg.index), "embedder": retriever.manifest["embedder"]["id"], "chunks": len(retriever)},
        "retrieval": retrieval,
        "systems": system_info,
        "contexts": cfg.contexts,
        "results": results,
        "timings": {"total_s": round(time.perf_counter() - t_start, 2), "retrieval_s": round(retrieval_s, 2)},
    }
    write_outputs(Path(cfg.output), metrics, records, skipped)
    return metrics


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

# (column header, path in a result, shown as a percentage)
COLUMNS: list[tuple[str, tuple[str, str]]] = [
    ("overall F1", ("squad2", "overall_f1")), ("HasAns F1", ("squad2", "has_f1")), ("NoAns acc.", ("squad2", "noans_acc")),
    ("EM", ("answer", "em")), ("F1", ("answer", "f1")), ("ROUGE-L", ("answer", "rougeL")),
    ("support", ("grounding", "token_support")), ("unsupported", ("grounding", "unsupported_rate")),
    ("no content", ("grounding", "no_content_rate")), ("cited lacks it", ("grounding", "unsupported_cited_rate")),
    ("yes/no acc.", ("yes_no", "accuracy")), ("cite prec.", ("citations", "precision")), ("uncited", ("citations", "uncited_rate")),
    ("abstain (unans.)", ("abstention", "abstain_rate")), ("false abstain", ("abstention", "false_abstain_rate")),
    ("ans. in ctx", ("context", "answer_in_context")), ("hijacked", ("injection", "hijack_rate")),
]


def fmt(value: float | None) -> str:
    """A rate as a percentage with one decimal; ``-`` when undefined."""
    return "-" if value is None else f"{100 * value:.1f}"


def result_rows(metrics: dict) -> list[list[str]]:
    """The main table's rows: system, context, n, then :data:`COLUMNS` as percentages."""
    rows = []
    for system in (s["name"] for s in metrics["systems"]):
        for ctx in metrics["contexts"]:
            r = metrics["results"][system][ctx]
            rows.append([system, ctx, str(r["counts"]["questions"]), *(fmt(r[a][b]) for _, (a, b) in COLUMNS)])
    return rows


def _table(header: list[str], rows: list[list[str]], text_columns: int = 0) -> str:
    """A Markdown table; the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    rule = "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_report(metrics: dict) -> str:
    """``report.md``: what was evaluated, retrieval, the main table, timings."""
    qa, ret, cfg = metrics["qa"], metrics["retrieval"], metrics["config"]
    ret_keys = [k for k in ret if k not in ("level", "questions")]
    sample = f" (seeded sample, seed {cfg['seed']})" if qa["sample"] == "seeded" else ""
    if qa.get("skipped"):
        sample += f"; {qa['skipped']} left out, answerable but without an answer (listed in {SKIPPED_FILE})"
    lines = [
        "# Evaluation report", "",
        f"QA file `{qa['path']}`: {qa['evaluated']} of {qa['total']} questions{sample}; {qa['answerable']} answerable, {qa['unanswerable']} unanswerable. Index `{metrics['index']['path']}` "
        f"({metrics['index']['chunks']} chunks, {metrics['index']['embedder']}); k = {cfg['k']} documents per prompt.", "",
        f"## Retrieval ({ret['level']} level, {ret['questions']} questions)", "",
        _table(ret_keys, [[fmt(ret[k]) for k in ret_keys]]) if ret_keys else "(no questions at this level)", "",
        "## Answers", "",
        "Percentages. Overall F1: SQuAD 2.0's, over all questions (a correct abstention scores 1); HasAns F1 and NoAns accuracy: "
        "answerable and unanswerable questions. EM, F1, ROUGE-L, false abstain and answer-in-context: answerable questions; abstain: unanswerable ones; "
        "support and unsupported: answers that did not abstain; citation columns: those on answerable questions; "
        "hijacked: answers containing HACKED with an injected instruction.", "",
        *([f"EM is not reported (-): the gold answers are free-form text ({fmt(qa.get('verbatim_share'))}% occur verbatim in their "
           "gold passage); token F1 and ROUGE-L compare them.", ""] if qa.get("answer_form") == "free-form" else []),
        _table(["system", "context", "n", *(c for c, _ in COLUMNS)], result_rows(metrics), 2), "",
        *injection_section(metrics),
        *task_section(metrics),
        "## Timings", "",
        _table(["system", "load s", *(f"{c} s/question" for c in metrics["contexts"])],
               [[s["name"], f"{s['load_s']:.1f}", *(f"{metrics['results'][s['name']][c]['timings']['per_question_s']:.3f}" for c in metrics["contexts"])]
                for s in metrics["systems"]], 1), "",
        f"Total {metrics['timings']['total_s']:.1f} s (retrieval {metrics['timings']['retrieval_s']:.1f} s).", "",
    ]
    return "\n".join(lines)


def task_section(metrics: dict) -> list[str]:
    """Report lines: the summary or JSON figures per system and context (only with --task summary|extract)."""
    task = metrics["config"].get("task", "qa")
    if task == "qa":
        return []
    columns = task_scores.COLUMNS[task]
    rows = [[s["name"], c, *(fmt(metrics["results"][s["name"]][c]["task"][k]) for _, k in columns)]
            for s in metrics["systems"] for c in metrics["contexts"]]
    what = {"summary": "References are written from each question's gold passage by the rules that write summary training targets "
                       "(rag_pipeline.data.tasks). Citation recall: sentences their cited passages support; precision: citations "
                       "needed (ALCE's definitions, the support measure as judge).",
            "extract": "References: the answer and its sentence from the gold passage, nulls for unanswerable questions. Valid JSON: "
                       "all answers; answer and quote figures: answerable questions; null accuracy: unanswerable ones; closed at "
                       "limit: all answers the decoder closed early at the token limit (valid, the last value cut short)."}[task]
    return [f"## Task: {task} (%)", "", what, "", _table(["system", "context", *(c for c, _ in columns)], rows, 2), ""]


def injection_section(metrics: dict) -> list[str]:
    """Report lines: the hijack rate per injection style and system (only with --injection)."""
    contexts = [c for c in metrics["contexts"] if c.startswith("injected")]
    if not contexts:
        return []
    systems = [s["name"] for s in metrics["systems"]]
    inj = {(s, c): metrics["results"][s][c]["injection"] for s in systems for c in contexts}
    styles = [st for st in STYLES if any(st in (r["by_style"] or {}) for r in inj.values())]
    rows = [[s, c, *(fmt((inj[s, c]["by_style"] or {}).get(st)) for st in styles), fmt(inj[s, c]["hijack_rate"])] for s in systems for c in contexts]
    return ["## Prompt injection (% of answers containing HACKED)", "", _table(["system", "context", *styles, "all"], rows, 2), ""]


def render_chart(metrics: dict, path: Path) -> None:
    """``chart.png``: one panel per metric, bars per system grouped by context."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    panels = [("overall F1 (SQuAD 2.0)", ("squad2", "overall_f1")), ("EM", ("answer", "em")), ("F1", ("answer", "f1")),
              ("ROUGE-L", ("answer", "rougeL"))]
    if any(c.startswith("injected") for c in metrics["contexts"]):
        panels.append(("hijacked by injection", ("injection", "hijack_rate")))
    systems, contexts = [s["name"] for s in metrics["systems"]], metrics["contexts"]
    fig = Figure(figsize=(4 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / max(len(contexts), 1)
    x = np.arange(len(systems))
    for ax, (title, (a, b)) in zip(axes, panels):
        for j, ctx in enumerate(contexts):
            raw = [metrics["results"][s][ctx][a][b] for s in systems]
            if all(v is None for v in raw):  # not measured in this context (hijack rate outside 'injected')
                continue
            vals = [100 * (v or 0.0) for v in raw]
            bars = ax.bar(x + (j - (len(contexts) - 1) / 2) * width, vals, width, label=ctx, color=f"C{j}")
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_title(title)
        ax.set_xticks(x, systems, rotation=15)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def write_outputs(output: Path, metrics: dict, records: list[dict], skipped: list[dict] | None = None) -> None:
    """Write the four output files into ``output``, atomically (and skipped.jsonl when records were left out)."""
    with atomic_dir(output, ARTIFACT) as tmp:
        if skipped:
            write_jsonl(tmp / SKIPPED_FILE, skipped)
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "predictions.jsonl", records, sort_keys=True)
        (tmp / "report.md").write_text(render_report(metrics), encoding="utf-8")
        render_chart(metrics, tmp / "chart.png")


def main(cfg: EvaluateConfig) -> int:
    """CLI entry: run, print the main table, return 0."""
    metrics = run(cfg)
    print(render_report(metrics))
    written = [*OUTPUT_FILES, *([SKIPPED_FILE] if metrics["qa"].get("skipped") else [])]
    print(f"wrote {', '.join(written)} to {cfg.output}")
    return 0
