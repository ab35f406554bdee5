"""Re-score evaluate's predictions.jsonl with the current is_abstention (no generation).

    .venv/bin/python scripts/rescore_predictions.py runs/eval-v2-retrieved/predictions.jsonl

Prints, per context, overall F1 / HasAns F1 / NoAns accuracy / false abstentions as run and re-scored.
"""
import json, sys, collections
from rag_pipeline import metrics as M
for path in sys.argv[1:]:
    by = collections.defaultdict(list)
    for l in open(path):
        r = json.loads(l); by[r["context"]].append(r)
    for ctx, rs in by.items():
        out = {}
        for mode in ("as-run", "rescored"):
            has, noans, fa, ovr = [], [], [], []
            for r in rs:
                ab = r["abstained"] or (mode == "rescored" and M.is_abstention(r["raw"] or ""))
                if r["answerable"]:
                    f = 0.0 if ab else M.f1(r["prediction"], r["gold"]); has.append(f); fa.append(ab); ovr.append(f)
                else:
                    noans.append(ab); ovr.append(1.0 if ab else 0.0)
            m = lambda x: round(100 * sum(x) / len(x), 1)
            out[mode] = (m(ovr), m(has), m(noans), m(fa))
        print(path, ctx, "overall/HasAnsF1/NoAns/FA", out)
