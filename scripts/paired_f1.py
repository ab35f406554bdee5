"""Two ``evaluate`` runs on the same questions, compared question by question: each run's overall F1 (SQuAD 2.0's,
as ``evaluate`` reports it) on the questions both answered, the mean per-question difference, and its 95% CI by a
seeded bootstrap over questions. Pairing removes the spread of question difficulty that the CI of each figure
alone carries (about ±3.4 points on the 813 test questions).

    .venv/bin/python scripts/paired_f1.py runs/eval-ref/predictions.jsonl runs/eval-soup/predictions.jsonl

One system and context per file unless ``--system``/``--context`` pick one (default context: retrieved).
"""

from __future__ import annotations

import argparse
import json
import random


def per_question(path: str, system: str | None = None, context: str = "retrieved") -> dict[str, float]:
    """{question id: its overall-F1 score} of one run: answerable -> its F1 (0 when abstained), unanswerable (or
    without a gold answer) -> 1 when abstained, else 0; as ``evaluate.squad2`` counts them."""
    scores: dict[str, float] = {}
    systems = set()
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    for r in records:
        if r["context"] != context or (system is not None and r["system"] != system):
            continue
        systems.add(r["system"])
        has = bool(r["answerable"] and r["scores"]["em"] is not None)
        scores[r["id"]] = (0.0 if r["abstained"] else float(r["scores"]["f1"])) if has else float(bool(r["abstained"]))
    if len(systems) > 1:
        raise SystemExit(f"{path} holds {len(systems)} systems ({', '.join(sorted(systems))}): pick one with --system")
    if not scores:
        raise SystemExit(f"{path} has no {context!r} records{f' of system {system!r}' if system else ''}: check --context/--system")
    return scores


def paired(a: dict[str, float], b: dict[str, float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Overall F1 of each on the common questions, the mean difference b - a and its percentile 95% CI."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise SystemExit("the two runs share no question: compare runs on the same QA file")
    diff = [b[i] - a[i] for i in ids]
    rng = random.Random(seed)
    means = sorted(sum(diff[rng.randrange(len(diff))] for _ in diff) / len(diff) for _ in range(resamples))
    return {"n": len(ids), "a": sum(a[i] for i in ids) / len(ids), "b": sum(b[i] for i in ids) / len(ids),
            "diff": sum(diff) / len(diff), "low": means[int(0.025 * resamples)], "high": means[int(0.975 * resamples) - 1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--system", nargs=2, default=[None, None], metavar=("FIRST", "SECOND"), help="the system of each file")
    ap.add_argument("--context", default="retrieved")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = paired(per_question(args.first, args.system[0], args.context), per_question(args.second, args.system[1], args.context),
               args.resamples, args.seed)
    print(f"{r['n']} questions: overall F1 {100 * r['a']:.1f} (first) and {100 * r['b']:.1f} (second); "
          f"second - first {100 * r['diff']:+.2f}, 95% CI [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}] "
          f"({args.resamples} bootstrap resamples, seed {args.seed})")


if __name__ == "__main__":
    main()
