"""Re-score evaluate's predictions.jsonl with the current ``metrics.is_abstention`` (no generation).

    .venv/bin/python scripts/rescore_predictions.py runs/eval-v2-retrieved/predictions.jsonl

Prints, per system and context, SQuAD 2.0's figures and the false-abstention rate as run and re-scored, through
evaluate's own ``aggregate``: only which answers count as abstentions changes.
"""
import collections
import json
import sys

from rag_pipeline.eval.evaluate import aggregate
from rag_pipeline.metrics import is_abstention


def figures(records: list[dict], context: str) -> str:
    m = aggregate(records, context)
    sq, fa = m["squad2"], m["abstention"]["false_abstain_rate"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    return (f"overall F1 {pct(sq['overall_f1'])}, HasAns F1 {pct(sq['has_f1'])}, NoAns acc. {pct(sq['noans_acc'])}, "
            f"false abstentions {pct(fa)}")


for path in sys.argv[1:]:
    by_context = collections.defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by_context[r["system"], r["context"]].append(r)
    for (system, context), records in by_context.items():
        rescored = [{**r, "abstained": r["abstained"] or is_abstention(r["raw"] or "")} for r in records]
        print(f"{path} {system} {context}\n  as run:   {figures(records, context)}\n  rescored: {figures(rescored, context)}")
