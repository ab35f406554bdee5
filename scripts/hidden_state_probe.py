#!/usr/bin/env python3
"""Does the tuned generator's hidden state know when a question is unanswerable? A linear probe on it, measured.

The null margin (log P(abstention) - log P(best answer)) ranks Disfl-QA's unanswerable questions barely above
chance (ROC AUC 0.52-0.58 for every adapter, and the same averaged over eight adapters). This script reads instead
the generator's hidden state (``--readings``: each a decoder layer and a pooling, ``last`` for the prompt's last
token, ``question`` for the mean from the question's first token to the prompt's end; default layer 18 both ways),
with the prompt built exactly as ``ask`` builds it (hybrid top-k retrieval, the adapter's template, the prompt
budget), and fits a logistic regression on
``--train-limit`` training questions (a seeded sample of the training split, none of which the threshold or the
figures see). It reports the probe's ROC AUC on the dev and test splits beside the margin's, then the
abstention rule it would make: the probe's score above a cutoff chosen on the dev split (the highest overall F1 with
false abstentions at most ``--max-false-abstain``, as ``calibrate`` chooses), alone or with the stored margin
threshold, applied to two ``evaluate`` runs of the same adapter (one on the dev split, one on the test split) by
re-scoring their predictions: an answer the margin withheld is scored as its ``raw``, as
``scripts/operating_points.py`` does. Nothing is generated again; features are cached in ``--output``.

``--with-answer --train-run RUN`` reads the prompt followed by the answer the run gave instead (its ``raw``: the
withheld one where the margin withheld it; the prompt alone where the retrieval threshold answered nothing): a
``last`` reading is then the state at the answer's last token, a ``question`` reading averages the answer too, so the
probe sees what the model said, not only what it was asked. The training
questions are then those of ``RUN``, an ``evaluate`` run of the adapter on training questions.

``--train-limit 0`` fits on the whole training split. Each test row is compared with the margin alone on the same
questions (paired bootstrap). ``--other-run RUN --other-index INDEX`` scores another domain's prompts (those of
``RUN``, an ``evaluate`` run of the adapter on that index) with the same probe and counts the answers the run showed
that the dev cutoffs would withhold as well: false abstentions there, where every question is answerable.

``--save`` stores the fitted probe and the "probe + margin" cutoff in the adapter's folder
(``answerability_probe.json``, :mod:`rag_pipeline.answer.probe`), where ``ask --abstain-probe`` reads it.

    rag-pipeline evaluate --config configs/evaluate.yaml --qa corpus/disfl_qa/qa/dev.jsonl \
        --adapter adapters/smollm2-disfl-qa --no-oracle --no-injection --limit 0 --output runs/eval-dev-ref
    .venv/bin/python scripts/hidden_state_probe.py --adapter adapters/smollm2-disfl-qa \
        --dev-run runs/eval-dev-ref --test-run runs/eval-ref-polar --output runs/probe

It needs scikit-learn (``bash scripts/install.sh --bench``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "scripts"))

from operating_points import at_threshold  # noqa: E402
from paired_f1 import paired as paired_bootstrap  # noqa: E402
from rag_pipeline.adapter_meta import read_adapter_meta  # noqa: E402
from rag_pipeline.answer import probe as answerability  # noqa: E402
from rag_pipeline.qa import load_qa  # noqa: E402

SPLITS = {name: REPO / "corpus" / "disfl_qa" / "qa" / f"{name}.jsonl" for name in ("train", "dev", "test")}


def features(adapter: str, index: str, split: str, limit: int, readings: tuple, cache: Path, answers: dict[str, str] | None = None):
    """(ids, the prompts' probe states of ``readings``, answerable) for a split, cached in ``cache`` under a name that
    holds what they were read from (the adapter, the index, the readings, the answers); ``answers`` (question id -> raw
    answer): the prompt followed by the answer, for those questions only."""
    import numpy as np

    def read() -> tuple:
        items = load_qa(SPLITS[split])
        random.Random(0).shuffle(items)
        items = items[:limit] if limit else items
        if answers is not None:
            items = [it for it in items if it.id in answers]
        xs = states(adapter, index, [it.question for it in items], readings, [answers[it.id] for it in items] if answers else None, split)
        return [it.id for it in items], np.array(xs), np.array([bool(it.answerable and it.answers) for it in items])

    return cached(cache / f"features-{split}-{limit}-{cache_key(adapter, index, answers, readings)}.npz", read)


def states(adapter: str, index: str, questions: list[str], readings: tuple, said: list[str] | None, what: str) -> list:
    """The probe state of ``readings`` of each question's prompt (built as ``ask`` builds it), or of the prompt followed
    by ``said`` (one answer per question; a ``question`` reading then averages the answer too):
    ``Pipeline.probe_states``, the reading ``ask --abstain-probe`` makes."""
    pipe = pipeline(adapter, index)
    xs, t0, pooled = [], time.perf_counter(), answerability.pooled(readings)
    for start in range(0, len(questions), 32):
        batch = list(range(start, min(start + 32, len(questions))))
        asked = [questions[i] for i in batch]
        prompts, windows = pipe.probe_inputs(pipe.prompt_texts(asked), asked, pooled)
        answers = [pipe.tokenizer(said[i], add_special_tokens=False)["input_ids"] if said else [] for i in batch]
        windows = [w + len(a) for w, a in zip(windows, answers)] if windows else None
        xs += pipe.probe_states([p + a for p, a in zip(prompts, answers)], readings, windows)
        print(f"{what}: {batch[-1] + 1}/{len(questions)} prompts, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return xs


@functools.lru_cache(maxsize=2)
def pipeline(adapter: str, index: str):  # -> rag_pipeline.answer.ask.Pipeline
    """The adapter's answering pipeline on ``index``, loaded once for every split read from it."""
    from rag_pipeline.answer import ask as A

    return A.Pipeline.load(A.AskConfig(adapter=adapter, index=index))


def cached(path: Path, read) -> tuple:
    """(ids, states, answerable) from the features file ``path``, or from ``read()``, then written there (to a part file
    renamed into place whole)."""
    import numpy as np

    if path.exists():
        f = np.load(path)
        return list(f["ids"]), f["X"], f["y"]
    ids, x, y = read()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.stem}.part.npz")
    np.savez(part, ids=np.array(ids), X=x, y=y)
    os.replace(part, path)
    return ids, x, y


def other_features(adapter: str, index: str, run: Path, readings: tuple, cache: Path):
    """(ids, prompt states, answerable) of the questions of ``run``, an ``evaluate`` run on another index, cached like
    :func:`features`."""
    import numpy as np

    def read() -> tuple:
        recs = list(records(run).values())
        return ([r["id"] for r in recs], np.array(states(adapter, index, [r["question"] for r in recs], readings, None, "other")),
                np.array([bool(r["answerable"] and r["gold"]) for r in recs]))

    return cached(cache / f"features-other-{cache_key(adapter, index, {'run': str(run.resolve())}, readings)}.npz", read)


def cache_key(adapter: str, index: str, answers: dict[str, str] | None, readings: tuple | None = None) -> str:
    """A short hash of what a split's features are read from: the adapter's weights file, the index, the answers, the
    readings (none for a cache of something else, ``scripts/order_consistency.py``'s)."""
    weights = Path(adapter) / "adapter_model.safetensors"
    stamp = [str(weights.resolve()), weights.stat().st_mtime_ns if weights.exists() else 0, str(Path(index).resolve()), answers]
    stamp += [answerability.describe(readings)] if readings else []
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]


def records(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "predictions.jsonl").open(encoding="utf-8")]
    return {r["id"]: r for r in rows if r["context"] == "retrieved" and r["system"] != "base"}


def outcomes(recs: list[dict], withheld: list[bool]) -> list[tuple[bool, bool, float]]:
    """(answerable, abstained, its overall-F1 score) of each record when the ``withheld`` answers are abstentions and the
    others are shown as the run gave them or, where the margin withheld them, as their ``raw``."""
    out = []
    for r, w in zip(recs, withheld):
        abstained, f1 = at_threshold(r, math.inf)
        abstained = abstained or w
        has = bool(r["answerable"] and r["gold"])
        out.append((has, abstained, (0.0 if abstained else f1) if has else float(abstained)))
    return out


def figures(recs: list[dict], withheld: list[bool]) -> dict[str, float]:
    """Overall F1, HasAns F1, NoAns accuracy and false abstentions of :func:`outcomes`."""
    each = outcomes(recs, withheld)
    has, no = [x for x in each if x[0]], [x for x in each if not x[0]]
    return {"overall": sum(x[2] for x in each) / len(each), "has_f1": sum(x[2] for x in has) / max(len(has), 1),
            "noans": sum(x[2] for x in no) / max(len(no), 1), "fa": sum(x[1] for x in has) / max(len(has), 1)}


def paired(recs: list[dict], base: list[bool], rule: list[bool]) -> tuple[float, float, float]:
    """Overall F1 of ``rule`` minus that of ``base`` (withheld answers of each) on the same questions, with
    ``scripts/paired_f1.py``'s 95% bootstrap interval: (difference, low, high)."""
    a, b = ({i: x[2] for i, x in enumerate(outcomes(recs, w))} for w in (base, rule))
    r = paired_bootstrap(a, b)
    return r["diff"], r["low"], r["high"]


def choose(recs: list[dict], scores, margin_withheld: list[bool], ceiling: float) -> float:
    """The probe cutoff with the highest overall F1 at false abstentions <= ``ceiling`` (+inf: never withhold)."""
    best, best_t = -1.0, math.inf
    for t in sorted(set(scores.tolist())) + [math.inf]:
        fig = figures(recs, [s > t or m for s, m in zip(scores, margin_withheld)])
        if fig["fa"] <= ceiling and fig["overall"] > best:
            best, best_t = fig["overall"], t
    return best_t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--readings", type=answerability.parse_readings, default="18:last,18:question",
                    help="LAYER:POOL,...: the hidden state after each decoder layer (0 = the embeddings), at the prompt's last "
                         "token (last) or averaged from the question's first token to the end (question)")
    ap.add_argument("--train-limit", type=int, default=3000, help="training questions the probe is fitted on (seeded sample)")
    ap.add_argument("--c", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    ap.add_argument("--max-false-abstain", type=float, default=0.15)
    ap.add_argument("--dev-run", required=True, help="evaluate --output of the adapter on the dev split")
    ap.add_argument("--test-run", required=True, help="evaluate --output of the adapter on the test split")
    ap.add_argument("--output", default="runs/probe", help="folder for the cached features")
    ap.add_argument("--with-answer", action="store_true", help="read the prompt followed by the run's answer (see above)")
    ap.add_argument("--train-run", default="", help="with --with-answer: evaluate --output of the adapter on training questions")
    ap.add_argument("--other-run", default="", help="evaluate --output of the adapter on another domain's questions: how many "
                                                     "more of them the probe's dev cutoffs would withhold")
    ap.add_argument("--other-index", default="indexes/coqa_ood", help="with --other-run: the index it retrieved from")
    ap.add_argument("--save", action="store_true", help="store the probe and its 'probe + margin' cutoff in the adapter, "
                                                        "for ask --abstain-probe (rag_pipeline/answer/probe.py)")
    args = ap.parse_args()
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if args.with_answer and not args.train_run:
        sys.exit("error: --with-answer needs --train-run, an evaluate run of the adapter on training questions")
    if args.with_answer and args.other_run:
        sys.exit("error: --other-run scores prompts alone, which a probe fitted --with-answer never read: drop one of the two")
    threshold = float(read_adapter_meta(args.adapter).abstention["free"]["threshold"])
    cache = Path(args.output)

    def said(run: str) -> dict[str, str] | None:
        return {q: r["raw"] for q, r in records(Path(run)).items()} if args.with_answer else None

    if args.save and args.with_answer:
        sys.exit("error: --save stores a probe on the prompt, as ask reads it: drop --with-answer")
    train_ids, x_train, y_train = features(args.adapter, args.index, "train", 0 if args.with_answer else args.train_limit, args.readings, cache,
                                   said(args.train_run) if args.with_answer else None)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.c, max_iter=5000)).fit(x_train, ~y_train)
    chosen = {}
    print(f"probe: {answerability.describe(args.readings)}{', at the end of the answer' if args.with_answer else ''}, {len(y_train)} training prompts ({int((~y_train).sum())} unanswerable), C {args.c}; "
          f"margin threshold {threshold:.2f}\n")
    print("| split | questions | margin ROC AUC | probe ROC AUC | rule | cutoff | overall F1 | against the margin (95% CI) | HasAns F1 | "
          "NoAns acc. | false abstentions |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for split, run in (("dev", args.dev_run), ("test", args.test_run)):
        ids, x, y = features(args.adapter, args.index, split, 0, args.readings, cache, said(run))
        by_id = records(Path(run))
        keep = [i for i, q in enumerate(ids) if q in by_id]
        recs = [by_id[ids[i]] for i in keep]
        scores = probe.decision_function(x[keep])
        margins = np.array([1e9 if r["margin"] is None else r["margin"] for r in recs])
        labels = ~y[keep]
        by_margin = [r["margin"] is not None and r["margin"] > threshold for r in recs]
        if split == "dev":
            chosen = {"probe": choose(recs, scores, [False] * len(recs), args.max_false_abstain),
                      "probe + margin": choose(recs, scores, by_margin, args.max_false_abstain)}
        rules = {"margin (stored)": (by_margin, threshold),
                 "probe": ([s > chosen["probe"] for s in scores], chosen["probe"]),
                 "probe + margin": ([s > chosen["probe + margin"] or m for s, m in zip(scores, by_margin)], chosen["probe + margin"])}
        for rule, (withheld, cut) in rules.items():
            fig = figures(recs, withheld)
            d, lo, hi = paired(recs, by_margin, withheld)
            against = "-" if withheld is by_margin else f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
            print(f"| {split} | {len(recs)} | {roc_auc_score(labels, margins):.3f} | {roc_auc_score(labels, scores):.3f} | {rule} | "
                  f"{cut:.2f} | {100 * fig['overall']:.1f} | {against} | {100 * fig['has_f1']:.1f} | "
                  f"{100 * fig['noans']:.1f} | {100 * fig['fa']:.1f} |")
    if args.other_run:
        other(probe, chosen, args)
    if args.save:
        save_probe(probe, chosen["probe + margin"], train_ids, y_train, args)
    return 0


def save_probe(fitted, cutoff: float, train_ids: list[str], y_train, args: argparse.Namespace) -> None:
    """Store the probe and its "probe or margin" cutoff in the adapter (:mod:`rag_pipeline.answer.probe`), for
    ``ask --abstain-probe``."""
    from rag_pipeline.answer import polar
    from rag_pipeline.atomic import write_json

    if not math.isfinite(cutoff):
        sys.exit(f"error: no probe cutoff keeps the dev run's false abstentions at most {args.max_false_abstain} beside the margin: "
                 "nothing to store (raise --max-false-abstain)")
    scaler, lr = fitted[0], fitted[-1]
    asked = {it.id: it.question for split in ("train", "dev") for it in load_qa(SPLITS[split])}
    yes_no = sum(polar.is_polar(asked[q]) for q in train_ids) + sum(polar.is_polar(asked[q]) for q in records(Path(args.dev_run)))
    threshold = float(read_adapter_meta(args.adapter).abstention["free"]["threshold"])
    p = answerability.Probe(args.readings, scaler.mean_, scaler.scale_, lr.coef_[0], float(lr.intercept_[0]), float(cutoff), yes_no,
                            answerability.weights_sha256(args.adapter), threshold)
    target = Path(args.adapter) / answerability.FILE
    write_json(target, p.to_json({"fitted_on": {"qa": str(SPLITS["train"].relative_to(REPO)), "questions": len(train_ids),
                                                "unanswerable": int((~y_train).sum()), "c": args.c, "index": args.index},
                                  "cutoff_chosen_on": {"run": args.dev_run, "rule": "the probe or the margin's stored threshold",
                                                       "max_false_abstain": args.max_false_abstain}}))
    print(f"\nwrote {target}: {answerability.describe(args.readings)}, cutoff {cutoff:.3f} (the probe or the margin), {yes_no} yes/no questions")


def other(probe, chosen: dict[str, float], args: argparse.Namespace) -> None:
    """The probe's dev cutoffs on another domain's run: its answerable questions that the run answered and the probe
    would withhold, added to the run's own abstentions (retrieval threshold, margin, answer check)."""
    run = Path(args.other_run)
    ids, x, _ = other_features(args.adapter, args.other_index, run, args.readings, Path(args.output))
    by_id = records(run)
    recs = [by_id[q] for q in ids]
    scores = probe.decision_function(x)
    has = [i for i, r in enumerate(recs) if r["answerable"] and r["gold"]]
    before = sum(recs[i]["abstained"] for i in has)
    print(f"\n{run} ({len(has)} answerable questions): the run's false abstentions {before} ({100 * before / max(len(has), 1):.1f}%)\n")
    print("| cutoff (from the dev split) | answers the probe would withhold as well | false abstentions |")
    print("| --- | ---: | ---: |")
    for rule, cut in chosen.items():
        more = sum(1 for i in has if not recs[i]["abstained"] and scores[i] > cut)
        print(f"| {rule}: {cut:.2f} | {more} | {100 * (before + more) / max(len(has), 1):.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
