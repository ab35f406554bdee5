"""Calibrated abstention: when to withhold an answer, chosen on the validation split.

The generator scores each question's *null margin*: ``log P(ABSTAIN) - log P(best answer)``,
where the best answer is the greedy one with the abstention sentence banned, and both are
sequence log-likelihoods under the prompt (:func:`rag_pipeline.generator.generate_with_margins`).
The answer is withheld when the margin is above a threshold. As SQuAD 2.0 systems choose their
null-score threshold, :func:`choose_threshold` picks the one that maximises overall F1 (a
correct abstention scores 1, an abstention on an answerable question 0) on the validation split,
subject to a ceiling on false abstentions (15% by default). ``rag-pipeline calibrate`` runs the
adapter through ``ask``'s pipeline on validation questions and stores the result in the adapter's
``rag_pipeline.json`` under ``abstention``; ``ask``, ``evaluate`` and ``serve`` then apply it
(:func:`rag_pipeline.answer.abstention.withhold`), shifted by ``--abstain-bias`` when given.

``--task summary`` calibrates a cited summary's abstention the same way (stored as the ``summary`` or
``summary_grounded`` mode): the margin compares the abstention with the best non-abstaining summary,
and a summary scores 1 when it holds a gold answer, 0 otherwise (:func:`summary_score`), so the
threshold abstains as much as the ceiling on refused answerable questions allows where summaries
would not hold the answer anyway.

``--task extract`` calibrates a JSON answer's abstention under :data:`rag_pipeline.data.tasks.EXTRACT_SCHEMA`
(the bundled corpus's JSON answers, ``{"answer": ..., "quote": ...}``; stored as the ``extract`` mode with the
schema): the abstention is the null object (every field null), the margin compares it with the best answer that is
not, and an answer scores the F1 of its ``answer`` field (:func:`extract_score`). ``ask``, ``evaluate`` and
``serve`` apply it to JSON answers under that schema only.

A validation file without answers is refused (every question would count as unanswerable and the
threshold would learn to abstain); answerable records without an answer are left out and listed
(``skipped`` in the stored result, and on the terminal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rag_pipeline.adapter_meta import read_adapter_meta, write_adapter_meta
from rag_pipeline.answer.abstention import YES_NO, mode_of, to_json
from rag_pipeline.answer import polar, structured
from rag_pipeline.answer.ask import Answer, Pipeline
from rag_pipeline.answer.settings import Abstention, AnswerCheck, AnswerSettings, AnswerStart, Orders, Reread, YesNoQuestions
from rag_pipeline.config import fixed, opt
from rag_pipeline.data import questions as written
from rag_pipeline.data import tasks
from rag_pipeline.errors import ConfigError
from rag_pipeline.eval.evaluate import sample_items, usable_items
from rag_pipeline.eval.retrieval import skipped_line
from rag_pipeline.metrics import f1, squad2_figures
from rag_pipeline.qa import QAFieldConfig, load_qa, require_answers, unique_questions
from rag_pipeline.textnorm import contains_answer

CalibrateTask = Literal["qa", "summary", "extract", "yes-no"]
SCORE_NAME = "null_margin"  # log P(abstain) - log P(best non-abstaining answer), both summed over tokens


def sweep(margins: Sequence[float], answered_f1: Sequence[float], answerable: Sequence[bool]) -> list[dict[str, float]]:
    """SQuAD 2.0 figures at every distinct threshold: abstain when ``margin > threshold``
    (:func:`rag_pipeline.metrics.squad2_figures` scores each).

    Args:
        margins: null margin per question; ``+inf`` abstains at every threshold (no generation, or
            even the best answering continuation was a refusal).
        answered_f1: token F1 of the question's best non-abstaining answer (ignored when unanswerable).
        answerable: whether each question has an answer.

    Returns:
        One row per candidate threshold (midpoints between sorted margins, plus both ends), with
        ``threshold``, ``overall_f1``, ``has_f1``, ``noans_acc`` and ``false_abstain_rate``.
    """
    if not len(margins) == len(answered_f1) == len(answerable) or not margins:
        raise ValueError(f"need equal, non-empty lists; got {len(margins)}, {len(answered_f1)}, {len(answerable)}")

    rows = []
    for t in candidate_thresholds(margins):
        fig = squad2_figures([m > t or m == math.inf for m in margins], answerable, answered_f1)
        rows.append({"threshold": t, "overall_f1": fig["overall_f1"],
                     "has_f1": math.nan if fig["has_f1"] is None else fig["has_f1"],
                     "noans_acc": math.nan if fig["noans_acc"] is None else fig["noans_acc"],
                     "false_abstain_rate": fig["false_abstain_rate"] or 0.0})
    return rows


def candidate_thresholds(margins: Sequence[float]) -> list[float]:
    """The thresholds worth trying on these null margins: -inf, the midpoints between the sorted distinct margins, +inf
    (a threshold between two margins withholds the same answers wherever it lies between them)."""
    values = sorted(set(float(m) for m in margins))
    return [-math.inf] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [math.inf]


def best_under_ceiling(rows: Sequence[dict[str, float]], max_false_abstain: float) -> dict[str, float]:
    """Of ``rows`` (``threshold``, ``overall_f1``, ``false_abstain_rate``), the one with the highest overall F1 whose false
    abstentions are at or under ``max_false_abstain``. Ties go to fewer false abstentions, then to the lower threshold.
    When none meets the ceiling (the forced abstentions alone exceed it), the one with the fewest false abstentions."""
    if not 0.0 <= max_false_abstain <= 1.0:
        raise ValueError(f"max_false_abstain must be in [0, 1], got {max_false_abstain}")
    feasible = [r for r in rows if r["false_abstain_rate"] <= max_false_abstain + 1e-12]
    if not feasible:
        least = min(r["false_abstain_rate"] for r in rows)
        feasible = [r for r in rows if r["false_abstain_rate"] == least]
    return max(feasible, key=lambda r: (round(r["overall_f1"], 12), -r["false_abstain_rate"], -r["threshold"]))


def choose_threshold(margins: Sequence[float], answered_f1: Sequence[float], answerable: Sequence[bool],
                     max_false_abstain: float = 0.15) -> dict[str, float]:
    """The threshold maximising overall F1 with false abstentions at or under ``max_false_abstain``
    (:func:`best_under_ceiling` of :func:`sweep`'s rows)."""
    return best_under_ceiling(sweep(margins, answered_f1, answerable), max_false_abstain)


# ---------------------------------------------------------------------------------------------
# The stage: rag-pipeline calibrate
# ---------------------------------------------------------------------------------------------


_GREEDY = "the null margin scores the generator's own greedy answer"


@dataclass
class CalibrateConfig(AnswerSettings, QAFieldConfig):
    """Settings of ``calibrate``: choose an adapter's abstention threshold on validation questions, answered
    as ``ask`` answers them (:class:`AnswerSettings`) but greedily and unchecked."""

    adapter: str = opt("", "train-generator output directory whose rag_pipeline.json receives the threshold")
    no_adapter: bool = fixed(False, "the threshold is stored in the adapter")
    qa: str = opt("corpus/disfl_qa/qa/dev.jsonl", "validation QA file (never the test split): answerable and unanswerable questions")
    limit: int = opt(400, "seeded sample of this many questions (0 = all); 400 keeps the threshold's noise near 2 points of F1")
    seed: int = opt(0, "seed of the sample")
    max_false_abstain: float = opt(0.15, "ceiling on abstentions among answerable questions; the threshold maximises overall "
                                         "F1 under it (SQuAD 2.0's null-score threshold, constrained)")
    grounded: bool = opt(False, "calibrate grounded decoding (stored separately from free decoding)")
    num_beams: int = fixed(1, _GREEDY)
    do_sample: bool = fixed(False, _GREEDY)
    temperature: float = fixed(0.7, _GREEDY)
    top_p: float = fixed(0.9, _GREEDY)
    abstention: Abstention = fixed("greedy", "calibrate chooses the threshold that calibrated abstention applies")
    abstain_bias: float = fixed(0.0, "calibrate chooses the threshold that the bias shifts")
    abstain_probe: bool = fixed(False, "the threshold is chosen on the margin alone (the probe's cutoff: "
                                       "scripts/hidden_state_probe.py)")
    probe_bias: float = fixed(0.0, "the threshold is chosen on the margin alone")
    orders: Orders = fixed("one", "the threshold is chosen on the margins of the passages in retrieved order, as stored")
    answer_check: AnswerCheck = fixed("grounded", "answers scored as ask shows them: one the check refuses is decoded again "
                                                  "grounded (the abstention ruled out), and abstains if that fails too; "
                                                  "off with --no-count-checked")
    reread: Reread = fixed("relevant", "answers scored as ask shows them: one citing only passages less about the question than "
                                       "another shown is answered again from the passages most about it; off with --no-count-checked")
    snippet: int = fixed(160, "calibrate shows no citations")
    answer_start: AnswerStart = opt("any", "what the best answering continuation may open with: any token, or not-refusal-word "
                                          "(not the abstention's first word, \"The\"); stored with the threshold, which ask, "
                                          "serve and evaluate then decode with")
    task: CalibrateTask = opt(
        "qa", "qa: the short answer's abstention; summary: the cited summary's (a summary scores 1 when it holds a gold answer); "
              "extract: a JSON answer's under rag_pipeline.data.tasks.EXTRACT_SCHEMA (its answer field's F1); each is stored "
              "separately. yes-no: not an abstention but the lean between yes and no of a yes/no answer's opening "
              "(rag_pipeline.answer.polar), measured on --limit yes/no questions written from the validation file's documents, "
              "half yes (a sentence as it stands) and half no (a fact swapped)")
    no_swap: written.NoSwap = opt("corpus", "--task yes-no: where a written 'no' question's swapped date, number or name comes "
                                            "from: corpus = one its passage does not mention (as build-raft-dataset writes by "
                                            "default); passage = one its passage mentions elsewhere (--question-no-swap passage), "
                                            "so that only reading the passage tells yes from no")
    yes_no_questions: YesNoQuestions = fixed("free", "thresholds are chosen on the model's own answers (a yes/no answer's "
                                                     "opening is chosen after the margin decided to answer)")
    schema: str = fixed("", "--task extract calibrates JSON answers under rag_pipeline.data.tasks.EXTRACT_SCHEMA, the schema "
                            "of the bundled corpus's JSON answers")
    dry_run: bool = opt(False, "print the threshold and its figures without writing them into the adapter")
    count_checked: bool = opt(True, "score answers as ask and serve show them, after the answer check (no content word, or "
                                    "unsupported by the passage they cite): the grounded span shown instead, or an abstention "
                                    "when that fails too, so that the ceiling on false abstentions holds with the check on; "
                                    "--no-count-checked calibrates the generator's answers alone")

    def __post_init__(self) -> None:
        if not self.adapter:
            raise ConfigError("adapter is empty: pass --adapter DIR (a train-generator output) to calibrate")
        self.answer_check = "grounded" if self.count_checked else "off"
        self.reread = "relevant" if self.count_checked else "off"
        super().__post_init__()
        if not 0.0 <= self.max_false_abstain <= 1.0:
            raise ConfigError(f"max_false_abstain is {self.max_false_abstain}: use a share in [0, 1], e.g. 0.15")
        if self.answer_start == "calibrated":
            raise ConfigError("answer_start is calibrated: calibrate chooses it, pass --answer-start any or not-refusal-word")
        if self.limit < 0:
            raise ConfigError(f"limit is {self.limit}: use 0 (every question) or a sample size")
        if self.task == "yes-no" and (self.grounded or self.limit < 1):
            raise ConfigError("--task yes-no measures free decoding's yes/no openings on --limit written questions: drop "
                              "--grounded (grounded decoding copies spans) and pass --limit 1 or more")
        if self.no_swap not in ("corpus", "passage"):
            raise ConfigError(f"--no-swap is {self.no_swap!r}: use corpus or passage")
        if self.no_swap != "corpus" and self.task != "yes-no":
            raise ConfigError(f"--no-swap {self.no_swap} chooses how --task yes-no writes its 'no' questions, but the task is "
                              f"{self.task}: add --task yes-no or drop --no-swap")
        if self.task == "extract":  # (AnswerSettings refuses --grounded with it)
            self.schema = structured.canonical(tasks.EXTRACT_SCHEMA)


def scored_answer(ans: Answer) -> tuple[float, str | None]:
    """The null margin at which this answer is withheld, and the answer shown below it (None: never shown).

    ``+inf`` (always an abstention): no generation (the retrieval threshold), a best answer that is itself a
    refusal (a JSON answer still the null object), or an answer the check refused whose grounded decode failed the
    check too.
    """
    if ans.margin is None or ans.abstained:  # calibrate answers with greedy abstention: no "calibration" reason here
        return math.inf, None
    return ans.margin, ans.answer


def summary_score(shown: str | None, answers: list[str]) -> float:
    """A shown summary's score for the threshold: 1 when it holds a gold answer (whole words), else 0."""
    return float(shown is not None and contains_answer(shown, answers))


def extract_score(shown: str | None, answers: list[str]) -> float:
    """A shown JSON answer's score for the threshold: the F1 of its ``answer`` field (0 when null or not JSON)."""
    try:
        data = json.loads(shown) if shown is not None else None
    except json.JSONDecodeError:
        return 0.0
    value = data.get("answer") if isinstance(data, dict) else None
    return f1(str(value), answers) if value is not None else 0.0


def roc_auc(margins: Sequence[float], answerable: Sequence[bool]) -> float | None:
    """How well the margin ranks unanswerable above answerable questions (0.5 = chance); None with one class."""
    from sklearn.metrics import roc_auc_score

    labels = [not a for a in answerable]
    if all(labels) or not any(labels):
        return None
    finite = [m if math.isfinite(m) else (1e9 if m > 0 else -1e9) for m in margins]
    return float(roc_auc_score(labels, finite))


def run(cfg: CalibrateConfig, pipe: Pipeline | None = None) -> dict[str, Any]:
    """Answer the validation questions with margins, choose the threshold, store it in the adapter.

    ``pipe``: the adapter already loaded with ``cfg`` (``tune`` runs both of its calibrations on one); None: load it.

    Returns:
        The stored calibration: threshold, its validation figures, the ceiling, the sample, AUC.

    Raises:
        InputError, ConfigError: a missing adapter or QA file, a QA file without answers, or an
            adapter without rag_pipeline.json.
    """
    import dataclasses

    if cfg.task == "yes-no":
        return run_yes_no(cfg, pipe)
    loaded = unique_questions(load_qa(cfg.qa, cfg.qa_fields()))
    require_answers(cfg.qa, loaded, cfg.qa_fields(), "used to calibrate abstention")  # before loading the model
    usable, skipped = usable_items(loaded)
    items = sample_items(usable, cfg.limit, cfg.seed)
    pipe = pipe or Pipeline.load(cfg)
    margins, answered_f1, answerable = [], [], []
    refused = grounded = reread = 0
    score = {"summary": summary_score, "extract": extract_score}.get(cfg.task, f1)
    for start in range(0, len(items), cfg.batch_size * 4):
        batch = items[start:start + cfg.batch_size * 4]
        for it, ans in zip(batch, pipe.answer_batch([it.question for it in batch], margins=True)):
            m, shown = scored_answer(ans)
            refused += ans.rejected not in (None, "misread") and shown is None
            grounded += ans.fallback == "grounded"
            reread += ans.rejected == "misread"
            margins.append(m)
            answered_f1.append(score(shown, it.answers) if it.answerable and it.answers and shown is not None else 0.0)
            answerable.append(bool(it.answerable and it.answers))
    best = choose_threshold(margins, answered_f1, answerable, cfg.max_false_abstain)
    greedy = next(r for r in sweep(margins, answered_f1, answerable) if r["threshold"] >= 0)  # ~ greedy decoding's choice
    result = {"score": SCORE_NAME, **to_json(best), "max_false_abstain": cfg.max_false_abstain, "qa": cfg.qa, "questions": len(items),
              "answerable": sum(answerable), "seed": cfg.seed, "k": cfg.k, "hybrid": cfg.hybrid, "roc_auc": roc_auc(margins, answerable),
              "yes_no_questions": sum(polar.is_polar(it.question) for it in items),  # none: the threshold withholds no yes/no answer
              "at_zero": to_json(greedy), "skipped": [{"id": s["id"], "reason": s["reason"]} for s in skipped],
              "answer_check": {"counted": cfg.count_checked, "refused": refused, "grounded": grounded, "reread": reread},
              "answer_start": cfg.answer_start, "task": cfg.task, "kernels": cfg.kernels, "draft_tokens": cfg.draft_tokens,
              **({"schema": cfg.schema} if cfg.task == "extract" else {})}
    if not cfg.dry_run:
        meta = read_adapter_meta(cfg.adapter)
        mode = mode_of(cfg.task, cfg.grounded)
        write_adapter_meta(cfg.adapter, dataclasses.replace(meta, abstention={**(meta.abstention or {}), mode: result}))
    return result


def run_yes_no(cfg: CalibrateConfig, pipe: Pipeline | None = None) -> dict[str, Any]:
    """Measure the adapter's lean between yes and no and store it (``abstention.yes_no``).

    Yes/no questions are written by rule from the chunks of the validation file's documents
    (:func:`rag_pipeline.data.questions.generate`: half a sentence as it stands, "yes"; half the same sentence with a
    name, date or number swapped for another of the corpus, "no"), and each is scored as ``ask`` would answer it
    (:meth:`~rag_pipeline.answer.ask.Pipeline.polar_scores`). The bias is the score above which as many answers say yes
    as the written questions hold yes answers: with it, the model's own ranking of the questions decides, not its
    leaning towards one word (a tuned reader that never saw yes/no answers says "no" to most).
    """
    import dataclasses

    import numpy as np

    loaded = load_qa(cfg.qa, cfg.qa_fields())
    docs = frozenset(it.doc_id for it in loaded if it.doc_id)
    if not docs:
        raise ConfigError(f"{cfg.qa} names no documents (doc_id): --task yes-no writes its questions from the validation "
                          "file's documents, pass a QA file with a doc_id field")
    pipe = pipe or Pipeline.load(dataclasses.replace(cfg, task="qa", no_swap="corpus"))
    if not polar.usable(pipe.tokenizer):
        raise ConfigError("the generator's tokenizer lacks a token that reads yes or one that reads no: its yes/no answers "
                          "cannot open with one, so there is no lean to measure")
    made = written.generate(pipe.retriever, written.RulesWriter(),
                            written.QuestionSettings(n=cfg.limit, yes_no=1.0, docs=docs, seed=cfg.seed, hybrid=cfg.hybrid,
                                                     no_swap=cfg.no_swap))
    # only questions ask would open with yes or no ("Is it true that ... which ...?" would not be)
    items = [it for it in made.items if it.answers and it.answers[0].lower() in ("yes", "no") and polar.is_polar(it.question)]
    gold = np.array([it.answers[0].lower() == "yes" for it in items])
    if gold.all() or not gold.any():
        raise ConfigError(f"the {len(items)} yes/no questions written from {cfg.qa}'s documents are all of one answer: "
                          "pass a larger --limit or a validation file with more documents")
    scores = np.array(pipe.polar_scores([it.question for it in items]))
    bias = float(np.quantile(scores, 1 - gold.mean()))
    said = scores > bias
    result = {"task": "yes-no", "bias": bias, "questions": len(items), "yes": int(gold.sum()), "no": int((~gold).sum()),
              "accuracy": float((said == gold).mean()), "accuracy_at_zero": float(((scores > 0) == gold).mean()),
              "said_yes_at_zero": float((scores > 0).mean()), "roc_auc": roc_auc(list(-scores), list(gold)),
              "qa": cfg.qa, "seed": cfg.seed, "k": cfg.k, "hybrid": cfg.hybrid, "no_swap": cfg.no_swap}
    if not cfg.dry_run:
        meta = read_adapter_meta(cfg.adapter)
        write_adapter_meta(cfg.adapter, dataclasses.replace(meta, abstention={**(meta.abstention or {}), YES_NO: result}))
    return result


def main(cfg: CalibrateConfig) -> int:
    """CLI entry: calibrate, then print the threshold and what it does on the validation sample."""
    r = run(cfg)

    def pct(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"

    where = "not written (--dry-run)" if cfg.dry_run else f"stored in {cfg.adapter}/rag_pipeline.json"
    if cfg.task == "yes-no":
        print(f"{r['questions']} written yes/no questions ({r['yes']} yes, {r['no']} no); yes-minus-no ROC AUC "
              f"{'-' if r['roc_auc'] is None else round(r['roc_auc'], 3)}")
        print(f"  unbiased (score > 0)  : says yes to {pct(r['said_yes_at_zero'])}, accuracy {pct(r['accuracy_at_zero'])}")
        print(f"  with the bias         : accuracy {pct(r['accuracy'])}")
        print(f"yes/no bias {r['bias']:.3f}: {where}")
        return 0

    print(f"{r['questions']} validation questions ({r['answerable']} answerable, {r['yes_no_questions']} yes/no); null-margin ROC AUC "
          f"{'-' if r['roc_auc'] is None else round(r['roc_auc'], 3)}")
    if r["skipped"]:
        print(skipped_line(r["skipped"]))
    if r["answer_check"]["counted"] and cfg.task == "qa":
        print(f"  the answer check: {r['answer_check'].get('grounded', 0)} answers scored as the grounded span shown instead, "
              f"{r['answer_check']['refused']} refused even then count as abstentions at every threshold")
    score = {"summary": "holds answer", "extract": "answer F1"}.get(cfg.task, "F1")
    for name, row in (("margin > 0 (about greedy)", r["at_zero"]), ("chosen threshold", r)):
        print(f"  {name:<26} threshold {row['threshold']!s:>8}: overall {score} {pct(row['overall_f1'])}, HasAns {score} {pct(row['has_f1'])}, "
              f"NoAns acc. {pct(row['noans_acc'])}, false abstentions {pct(row['false_abstain_rate'])}")
    print(f"threshold {r['threshold']} ({mode_of(cfg.task, cfg.grounded).replace('_', ' ')} decoding, false abstentions <= "
          f"{cfg.max_false_abstain:.0%}): {where}")
    return 0
