"""Re-score evaluate's predictions.jsonl with the current ``metrics.is_abstention`` (no generation).

    .venv/bin/python scripts/rescore_predictions.py runs/eval-v2-retrieved/predictions.jsonl
    .venv/bin/python scripts/rescore_predictions.py --without-answer-check runs/evaluate/predictions.jsonl
    .venv/bin/python scripts/rescore_predictions.py --threshold inf runs/evaluate/predictions.jsonl

Prints, per system and context, SQuAD 2.0's figures and the false-abstention rate as run and re-scored, through
evaluate's own ``aggregate``: only which answers count as abstentions changes. With ``--without-answer-check``,
"re-scored" is the run as if ``--answer-check off``: every answer the check refused (``rejected``) is scored as
the generator wrote it (its ``raw``), and the junk among the answers shown is counted. With ``--threshold T``,
"re-scored" is the run with the calibrated abstention at threshold T (``inf``: never): an answer withheld by the
calibration whose margin is at most T is scored as its withheld ``raw``, and a shown answer whose margin is above
T as an abstention (an answer the answer check replaced keeps its replacement). It knows no adapter, so it
withholds every answer above T, yes/no answers too, where ``ask`` would not withhold those under a threshold
calibrated on no yes/no question: for a run with yes/no questions use ``scripts/operating_points.py``.
"""
import collections
import json
import sys

from rag_pipeline.eval.evaluate import aggregate
from rag_pipeline.metrics import exact_match, f1, is_abstention


def figures(records: list[dict], context: str) -> str:
    m = aggregate(records, context)
    sq, fa = m["squad2"], m["abstention"]["false_abstain_rate"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    g = m["grounding"]
    return (f"overall F1 {pct(sq['overall_f1'])}, HasAns F1 {pct(sq['has_f1'])}, NoAns acc. {pct(sq['noans_acc'])}, "
            f"false abstentions {pct(fa)}; answers shown {m['counts']['answered']}, of which no content "
            f"{pct(g.get('no_content_rate'))}%, cited passage lacks it {pct(g.get('unsupported_cited_rate'))}%")


def unchecked(r: dict) -> dict:
    """The record as if the answer check had not run: a refused answer scored as the generator wrote it (one read again
    from the passage most about the question, ``--reread``, stays as it is: that is no part of the check)."""
    if r.get("rejected") in (None, "misread"):
        return r
    raw, gold, answerable = r["raw"], r["gold"], r["answerable"] and bool(r["gold"])
    scores = {**r["scores"], "em": exact_match(raw, gold) if answerable else None, "f1": f1(raw, gold) if answerable else None,
              "problem": r["rejected"]}
    return {**r, "prediction": raw, "abstained": False, "scores": scores}


def at_threshold(r: dict, threshold: float) -> dict:
    """The record as the calibrated abstention would have it at ``threshold``."""
    if r.get("margin") is None or (r["abstained"] and r["abstain_reason"] != "calibration"):
        return r
    if r["margin"] > threshold:
        return {**r, "abstained": True, "abstain_reason": "calibration"}
    if r["abstain_reason"] != "calibration":
        return r
    raw, gold, answerable = r["raw"], r["gold"], r["answerable"] and bool(r["gold"])
    scores = {**r["scores"], "em": exact_match(raw, gold) if answerable else None, "f1": f1(raw, gold) if answerable else None}
    return {**r, "prediction": raw, "abstained": False, "abstain_reason": None, "scores": scores}


undo = "--without-answer-check" in sys.argv
args = sys.argv[1:]
threshold = float(args[args.index("--threshold") + 1]) if "--threshold" in args else None
if threshold is not None:
    del args[args.index("--threshold"):args.index("--threshold") + 2]


for path in [a for a in args if not a.startswith("--")]:
    by_context = collections.defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by_context[r["system"], r["context"]].append(r)
    for (system, context), records in by_context.items():
        if threshold is not None:
            rescored = [at_threshold(r, threshold) for r in records]
        elif undo:
            rescored = [unchecked(r) for r in records]
        else:
            rescored = [{**r, "abstained": r["abstained"] or is_abstention(r["raw"] or "")} for r in records]
        print(f"{path} {system} {context}\n  as run:   {figures(records, context)}\n  rescored: {figures(rescored, context)}")
