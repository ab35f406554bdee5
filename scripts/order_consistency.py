#!/usr/bin/env python3
"""Does the answer survive the retrieved passages shown in the other order? Self-consistency as an answerability signal.

For each question of an ``evaluate`` run that reached the generator, the same adapter answers again with the run's
retrieved passages in reverse order (``answer_batch`` with those contexts, null margins scored), and the script
reports how well three scores rank the unanswerable questions (ROC AUC): the disagreement of the two answers (1 -
their token F1), the run's null margin, and the mean of the two margins; then the rules they make, applied to the run
by re-scoring it (as ``scripts/hidden_state_probe.py`` does; the run's answers are the ones shown):

    .venv/bin/python scripts/order_consistency.py --adapter adapters/smollm2-disfl-qa --run runs/eval-dev-ref \\
        --output runs/order/dev.json

and the answers of ``ask --orders both``: each question's answer is the one of the two orders with the lower null
margin (the order the model is surer of), withheld when the mean of the two margins is over the stored threshold (its
citations are numbered in its own order; the answer check's no-content rule still applies). Every margin rule is
``ask``'s (``abstention.withhold``): a yes/no answer the run opened with Yes or No is not withheld by a threshold, nor
by a probe, measured on no yes/no question. ``--probe-bias B,...`` adds the adapter's
answerability probe (``ask --abstain-probe``, its states read from the run's prompts and cached beside
``--output``): a question it scores above its cutoff + B is withheld too, for the run's answers and the ensemble's
alike, one row per bias.

It needs scikit-learn (``bash scripts/install.sh --bench``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "scripts"))

from hidden_state_probe import cache_key, figures, other_features, records  # noqa: E402
from operating_points import at_threshold, opened_yes_no, run_config  # noqa: E402
from rag_pipeline.adapter_meta import read_adapter_meta  # noqa: E402
from rag_pipeline.answer import polar  # noqa: E402
from rag_pipeline.answer.abstention import surer_order, unmeasured_yes_no, withhold  # noqa: E402
from rag_pipeline.atomic import write_json  # noqa: E402
from rag_pipeline.answer.check import answer_problem  # noqa: E402
from rag_pipeline.metrics import extract_answer, f1  # noqa: E402


def swapped(adapter: str, index: str, run: Path, recs: list[dict], out: Path) -> dict[str, dict]:
    """Question id -> {raw, margin} answered with the run's passages reversed; cached in ``out`` under a key of what they
    were answered from (the adapter's weights, the index, the run)."""
    key = cache_key(adapter, index, {"run": str(run.resolve())})
    if out.exists():
        try:
            cached = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            cached = None
        if not isinstance(cached, dict) or cached.get("key") != key or not isinstance(cached.get("answers"), dict):
            sys.exit(f"error: {out} is not this script's answers for this adapter, index and run: pass another --output")
        return cached["answers"]
    from rag_pipeline.answer import ask as A
    from rag_pipeline.passage import from_chunk

    pipe = A.Pipeline.load(A.AskConfig(adapter=adapter, index=index, reread="off"))  # each order's own answer and margin
    store, res, t0 = pipe.retriever.store, {}, time.perf_counter()
    for start in range(0, len(recs), 16):
        batch = recs[start:start + 16]
        contexts = [[from_chunk(store.get(d["id"]), None, n) for n, d in enumerate(reversed(r["documents"]), 1)] for r in batch]
        for r, a in zip(batch, pipe.answer_batch([r["question"] for r in batch], contexts=contexts, margins=True)):
            res[r["id"]] = {"raw": a.raw, "margin": a.margin}
        print(f"{start + len(batch)}/{len(recs)} questions, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    write_json(out, {"key": key, "answers": res})
    return res


def lower_margin(r: dict, other: dict) -> dict:
    """The record ``r`` as ``ask --orders both`` answers it, beside the reversed order's answer ``other`` ({raw, margin}):
    the answer of the order with the lower null margin (where that is ``other``'s, scored against the gold answers, and
    refused when it has no content word, as ``ask``'s answer check refuses it), with the mean of the two margins as its
    margin, which the threshold judges."""
    if other.get("margin") is None:
        return r
    other_shown, mean = surer_order(r["margin"], other["margin"])
    if not other_shown:
        return {**r, "margin": mean}
    has = bool(r["answerable"] and r["gold"])
    refused = answer_problem(other["raw"], [], yes_no=polar.may_be_yes_no(r["question"])) == "no_content"
    return {**r, "raw": other["raw"], "margin": mean, "abstained": refused, "abstain_reason": "check" if refused else None,
            "scores": {**r["scores"], "f1": f1(extract_answer(other["raw"]), r["gold"]) if has else None}}


def by_threshold(r: dict, margin: float | None = None, *, calibration: dict, opened: bool) -> bool:
    """Whether ``ask``'s calibrated rule withholds the record's answer (``margin``: another than its own): margin over the
    ``calibration``'s threshold, unless the run ``opened`` a yes/no question's answer with Yes or No and the threshold was
    calibrated on no yes/no question (``abstention.withhold``)."""
    return withhold(r["margin"] if margin is None else margin, calibration, 0.0, opened and polar.is_polar(r["question"]))


def agreement(a: str, b: str) -> float:
    """Token F1 of two answers, their citations left out."""
    return f1(extract_answer(a), [extract_answer(b)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--run", required=True, help="evaluate --output of the adapter (retrieved contexts, k = 2)")
    ap.add_argument("--output", required=True, help="JSON file caching the answers with the passages reversed")
    ap.add_argument("--probe-bias", default="", help="B,...: rows with the adapter's answerability probe, its cutoff moved by "
                                                      "each B (--probe-bias=-0.3,0,0.3: with = when the first is negative)")
    args = ap.parse_args()
    try:
        biases = [float(b) for b in args.probe_bias.split(",")] if args.probe_bias else []
    except ValueError:
        sys.exit(f"error: --probe-bias {args.probe_bias!r} is not numbers separated by commas (e.g. -0.3,0,0.3)")
    import numpy as np
    from sklearn.metrics import roc_auc_score

    calibration = read_adapter_meta(args.adapter).abstention["free"]
    if run_config(Path(args.run)).get("orders") == "both":
        sys.exit(f"error: {args.run} was answered with --orders both (its passages already in the surer order, its margins "
                 "means): pass a run made with --orders one")
    threshold, opened = float(calibration["threshold"]), opened_yes_no(Path(args.run))
    held = functools.partial(by_threshold, calibration=calibration, opened=opened)
    recs = [r for r in records(Path(args.run)).values() if r["margin"] is not None]  # the retrieval threshold answered none
    again = swapped(args.adapter, args.index, Path(args.run), recs, Path(args.output))
    labels = np.array([not (r["answerable"] and r["gold"]) for r in recs])
    agree = np.array([agreement(r["raw"], again[r["id"]]["raw"]) for r in recs])
    m0 = np.array([r["margin"] for r in recs])
    m1 = np.array([r["margin"] if again[r["id"]]["margin"] is None else again[r["id"]]["margin"] for r in recs])  # none: the run's
    ranks = (f"; ROC AUC: disagreement {roc_auc_score(labels, -agree):.3f}, the run's margin {roc_auc_score(labels, m0):.3f}, the "
             f"reversed order's {roc_auc_score(labels, m1):.3f}, their mean {roc_auc_score(labels, m0 + m1):.3f}"
             if 0 < labels.sum() < len(labels) else "")  # a run of answerable questions only (another domain's) ranks nothing
    print(f"{args.run}: {len(recs)} questions that reached the generator ({int(labels.sum())} unanswerable); the same answer "
          f"(F1 1) with the passages reversed: {np.mean(agree[~labels] == 1):.1%} of answerable, "
          f"{np.mean(agree[labels] == 1) if labels.any() else math.nan:.1%} of unanswerable{ranks}\n")
    print("| rule | overall F1 | HasAns F1 | NoAns acc. | false abstentions |")
    print("| --- | ---: | ---: | ---: | ---: |")
    by_margin = np.array([held(r) for r in recs])
    for rule, withheld in ((f"the margin over the stored threshold ({threshold:.2f})", by_margin),
                           ("the mean of the two margins over it", np.array([held(r, (a + b) / 2) for r, a, b in zip(recs, m0, m1)])),
                           ("the margin, or the answers differ at all", by_margin | (agree < 1)),
                           ("the margin, or the answers share under half their words", by_margin | (agree < 0.5))):
        fig = figures(recs, list(withheld))
        print(f"| {rule} | {100 * fig['overall']:.1f} | {100 * fig['has_f1']:.1f} | {100 * fig['noans']:.1f} | {100 * fig['fa']:.1f} |")
    ensemble = [lower_margin(r, again[r["id"]]) for r in recs]
    fig = figures(ensemble, [held(r) for r in ensemble])
    print(f"| ask --orders both: the answer of the order with the lower margin, withheld when the mean margin is over the "
          f"threshold | {100 * fig['overall']:.1f} | "
          f"{100 * fig['has_f1']:.1f} | {100 * fig['noans']:.1f} | {100 * fig['fa']:.1f} |")
    raw = [sum(at_threshold(r, math.inf)[1] for r in rs if r["answerable"] and r["gold"]) / max(1, int((~labels).sum()))
           for rs in (recs, ensemble)]
    print(f"\nHasAns F1 with nothing withheld: the run's answers {100 * raw[0]:.1f}, the lower-margin answers {100 * raw[1]:.1f}")
    if biases:
        with_probe(args, recs, ensemble, held, opened, biases)
    return 0


def with_probe(args: argparse.Namespace, recs: list[dict], ensemble: list[dict], held, opened: bool, biases: list[float]) -> None:
    """Rows with the adapter's answerability probe (its scores of the run's prompts, cached beside ``--output``): a question
    scored above the probe's cutoff + each bias is withheld too, for the run's answers and for the lower-margin ones."""
    from rag_pipeline.answer import probe as answerability

    probe = answerability.read(args.adapter)
    ids, x, _ = other_features(args.adapter, args.index, Path(args.run), probe.readings, Path(args.output).parent)
    score = dict(zip(ids, (probe.score(v) for v in x)))
    print(f"\nwith the answerability probe ({answerability.describe(probe.readings)}, cutoff {probe.cutoff:.3f}):\n")
    print("| probe bias | answers | overall F1 | HasAns F1 | NoAns acc. | false abstentions |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for b in biases:
        for name, rs in (("the run's", recs), ("both orders'", ensemble)):
            fig = figures(rs, [held(r) or (score[r["id"]] > probe.cutoff + b and not unmeasured_yes_no(
                probe.yes_no_questions, opened and polar.is_polar(r["question"]))) for r in rs])
            print(f"| {b:+.3f} | {name} | {100 * fig['overall']:.1f} | {100 * fig['has_f1']:.1f} | {100 * fig['noans']:.1f} | "
                  f"{100 * fig['fa']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
