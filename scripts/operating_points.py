"""A calibrated adapter's operating points: answers shown, overall F1, HasAns F1, NoAns accuracy, false abstentions and
citation precision at each threshold on the null margin (the margin's deciles, and the adapter's own) with the
``--abstain-bias`` that gives it, from one ``evaluate`` run's predictions.jsonl (no generation), the null margin's ROC
AUC, and the threshold ``calibrate``'s rule picks on the run's own records (``--max-false-abstain``): on a validation
run, the bias to pass for the settings the run was made with (``--orders both``, ``--abstain-probe``), which the stored
threshold was not chosen under.

    .venv/bin/python scripts/operating_points.py runs/evaluate/predictions.jsonl --adapter adapters/smollm2-disfl-qa

Each record of the run holds its null margin, and when the calibrated threshold withheld the answer, the answer
the generator would have given (``raw``). At threshold t an answer is withheld when margin > t (``ask`` applies
the stored threshold plus ``--abstain-bias``); an answer shown at t that the run withheld is scored as the generator wrote it, or as an abstention
when it holds no content word (the answer check; whether its cited passage holds it is not recorded). At the stored
threshold the run's own figures come back. Answers without a
margin (the retrieval threshold, or a generator that refused even with the refusal ruled out) abstain at every bias.
A yes/no question's answer that the run opened with Yes or No (its ``metrics.json`` says ``yes_no_questions:
yes-or-no``; a run without one is taken as free) under a threshold calibrated on no yes/no question is never withheld
by the threshold (``abstention.withhold`` decides, as in ``ask``): it stays as the run has it at every bias. Grounded
contexts (``--context .../grounded``) are spans and never exempt.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
from pathlib import Path

from sklearn.metrics import roc_auc_score

from rag_pipeline.adapter_meta import read_adapter_meta
from rag_pipeline.answer import polar
from rag_pipeline.answer.abstention import withhold
from rag_pipeline.answer.check import answer_problem
from rag_pipeline.eval.calibrate import best_under_ceiling, candidate_thresholds
from rag_pipeline.metrics import f1, polarity


def at_threshold(r: dict, threshold: float, calibration: dict | None = None, opened: bool = False) -> tuple[bool, float]:
    """(abstained, F1 when answerable) of one record when answers whose margin passes ``threshold`` are withheld
    (``calibration``: the adapter's, whose threshold this one stands in for; ``opened``: the run opened yes/no
    questions' answers with Yes or No: see the module docstring)."""
    answerable = r["answerable"] and bool(r["gold"])
    margin = r["margin"]
    if margin is None:
        return True, 0.0
    yes_no = opened and polar.is_polar(r["question"]) and polarity(r["raw"]) is not None
    if withhold(margin, {**(calibration or {}), "threshold": threshold}, 0.0, yes_no):
        return True, 0.0
    if r["abstain_reason"] == "calibration":  # withheld in the run, shown at this bias
        if answer_problem(r["raw"], [], yes_no=polar.may_be_yes_no(r["question"])) == "no_content":
            return True, 0.0
        return False, f1(r["raw"], r["gold"]) if answerable else 0.0
    if r["abstained"]:
        return True, 0.0
    return False, (r["scores"]["f1"] or 0.0) if answerable else 0.0


def run_config(run: Path) -> dict:
    """The settings an ``evaluate`` run in folder ``run`` recorded (its ``metrics.json``'s ``config``; {} without one)."""
    metrics = run / "metrics.json"
    return json.loads(metrics.read_text(encoding="utf-8")).get("config", {}) if metrics.exists() else {}


def opened_yes_no(run: Path, context: str = "retrieved") -> bool:
    """Whether the ``evaluate`` run in folder ``run`` opened yes/no questions' answers with Yes or No (its config says
    ``yes_no_questions: yes-or-no``; runs from before that setting record none: free) in a free ``context``."""
    return run_config(run).get("yes_no_questions") == "yes-or-no" and not context.endswith("/grounded")


def figures(records: list[dict], threshold: float, calibration: dict | None = None, opened: bool = False) -> dict[str, float]:
    """Overall F1, HasAns F1, NoAns accuracy and false abstentions at ``threshold``; ``answers`` shown; ``citation_precision``
    (share of the shown answerable answers' citations whose passage holds a gold answer, as ``evaluate`` judges them)
    where every such answer was shown in the run, whose records judge its citations (None where the threshold shows an
    answer the run withheld)."""
    has = [r for r in records if r["answerable"] and r["gold"]]
    no = [r for r in records if not (r["answerable"] and r["gold"])]
    res = {id(r): at_threshold(r, threshold, calibration, opened) for r in records}
    has_f1 = sum(0.0 if res[id(r)][0] else res[id(r)][1] for r in has) / max(1, len(has))
    noans = sum(res[id(r)][0] for r in no) / max(1, len(no))
    fa = sum(res[id(r)][0] for r in has) / max(1, len(has))
    overall = (has_f1 * len(has) + noans * len(no)) / max(1, len(records))
    shown = [r for r in has if not res[id(r)][0]]
    judged = [h for r in shown for h in r["scores"].get("cited_holds_answer", []) if h is not None]
    cite = None if any(r["abstained"] for r in shown) or not judged else sum(judged) / len(judged)
    return {"overall_f1": overall, "has_f1": has_f1, "noans_acc": noans, "false_abstain_rate": fa,
            "answers": sum(not a for a, _ in res.values()), "citation_precision": cite}


def calibrated(records: list[dict], calibration: dict | None, opened: bool, max_false_abstain: float) -> tuple[float, dict]:
    """``calibrate``'s rule (:func:`~rag_pipeline.eval.calibrate.best_under_ceiling`) on the run's own records, over its
    candidate thresholds (midpoints between the records' margins, so that a bias rounded as printed withholds the same
    answers): the threshold and its figures."""
    cuts = candidate_thresholds([r["margin"] for r in records if r["margin"] is not None])
    best = best_under_ceiling([{"threshold": t, **figures(records, t, calibration, opened)} for t in cuts], max_false_abstain)
    return best["threshold"], best


def passed(t: float, threshold: float) -> float:
    """The threshold ``ask`` applies for the ``--abstain-bias`` printed for ``t`` (rounded to 3 decimals), so that a row's
    figures are those of the bias it prints."""
    return t if not (math.isfinite(threshold) and math.isfinite(t)) else threshold + round(t - threshold, 3)


def row(t: float, threshold: float, fig: dict, mark: str = "") -> str:
    """One table row: the threshold, the --abstain-bias that gives it, and its figures."""
    bias = "-" if not math.isfinite(threshold) else "+inf" if t == math.inf else f"{t - threshold:+.3f}"
    cite = "-" if fig["citation_precision"] is None else f"{100 * fig['citation_precision']:.1f}"
    return (f"| {t:.2f}{mark} | {bias} | {fig['answers']} | {100 * fig['overall_f1']:.1f} | {100 * fig['has_f1']:.1f} | "
            f"{100 * fig['noans_acc']:.1f} | {100 * fig['false_abstain_rate']:.1f} | {cite} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions")
    ap.add_argument("--adapter", required=True, help="the adapter whose calibrated threshold the run applied")
    ap.add_argument("--context", default="retrieved")
    ap.add_argument("--max-false-abstain", type=float, default=0.15, help="the ceiling of calibrate's rule, applied to the run")
    args = ap.parse_args()
    calibration = read_adapter_meta(args.adapter).abstention["free"]
    threshold = float(calibration["threshold"])
    opened = opened_yes_no(Path(args.predictions).parent, args.context)
    yes_no_exempt = opened and calibration.get("yes_no_questions") == 0
    by_system = collections.defaultdict(list)
    with open(args.predictions, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["context"] == args.context and r["system"] != "base":
                by_system[r["system"]].append(r)
    for system, records in by_system.items():
        labels = [not (r["answerable"] and r["gold"]) for r in records]
        scores = [1e9 if r["margin"] is None else r["margin"] for r in records]
        auc = roc_auc_score(labels, scores) if 0 < sum(labels) < len(labels) else float("nan")
        print(f"{system}: {len(records)} questions, stored threshold {threshold:.2f}, null margin ROC AUC {auc:.3f}"
              + ("; yes/no answers never withheld (a threshold calibrated on none)" if yes_no_exempt else ""))
        print("| threshold | --abstain-bias | answers | overall F1 | HasAns F1 | NoAns acc. | false abstentions | cite prec. |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        mids = candidate_thresholds([r["margin"] for r in records if r["margin"] is not None])[1:-1] or [threshold]
        cuts = sorted({mids[int(q * (len(mids) - 1))] for q in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)} | {threshold, math.inf})
        for t in map(functools.partial(passed, threshold=threshold), cuts):
            print(row(t, threshold, figures(records, t, calibration, opened), " (stored)" if t == threshold else ""))
        t = passed(calibrated(records, calibration, opened, args.max_false_abstain)[0], threshold)
        fig = figures(records, t, calibration, opened)
        print(f"\ncalibrate's rule on these records (the highest overall F1 with false abstentions at most "
              f"{args.max_false_abstain:.0%}):\n")
        print(row(t, threshold, fig))


if __name__ == "__main__":
    main()
