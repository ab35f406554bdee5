#!/usr/bin/env python3
"""Does the answer survive the retrieved passages shown in the other order? Self-consistency as an answerability signal.

For each question of an ``evaluate`` run that reached the generator, the same adapter answers again with the run's
retrieved passages in reverse order (``answer_batch`` with those contexts, null margins scored), and the script
reports how well three scores rank the unanswerable questions (ROC AUC): the disagreement of the two answers (1 -
their token F1), the run's null margin, and the mean of the two margins; then the rules they make, applied to the run
by re-scoring it (as ``scripts/hidden_state_probe.py`` does; the run's answers are the ones shown):

    .venv/bin/python scripts/order_consistency.py --adapter adapters/smollm2-disfl-qa --run runs/eval-dev-ref \\
        --output runs/order/dev.json

It needs scikit-learn (``bash scripts/install.sh --bench``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "scripts"))

from hidden_state_probe import cache_key, figures, records  # noqa: E402
from rag_pipeline.adapter_meta import read_adapter_meta  # noqa: E402
from rag_pipeline.atomic import write_json  # noqa: E402
from rag_pipeline.metrics import f1  # noqa: E402


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

    pipe = A.Pipeline.load(A.AskConfig(adapter=adapter, index=index))
    store, res, t0 = pipe.retriever.store, {}, time.perf_counter()
    for start in range(0, len(recs), 16):
        batch = recs[start:start + 16]
        contexts = [[from_chunk(store.get(d["id"]), None, n) for n, d in enumerate(reversed(r["documents"]), 1)] for r in batch]
        for r, a in zip(batch, pipe.answer_batch([r["question"] for r in batch], contexts=contexts, margins=True)):
            res[r["id"]] = {"raw": a.raw, "margin": a.margin}
        print(f"{start + len(batch)}/{len(recs)} questions, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    write_json(out, {"key": key, "answers": res})
    return res


def agreement(a: str, b: str) -> float:
    """Token F1 of two answers, their citations left out."""
    strip = lambda t: re.sub(r"\s*\[\d+\]", "", t).strip()  # noqa: E731
    return f1(strip(a), [strip(b)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--run", required=True, help="evaluate --output of the adapter (retrieved contexts, k = 2)")
    ap.add_argument("--output", required=True, help="JSON file caching the answers with the passages reversed")
    args = ap.parse_args()
    import numpy as np
    from sklearn.metrics import roc_auc_score

    threshold = float(read_adapter_meta(args.adapter).abstention["free"]["threshold"])
    recs = [r for r in records(Path(args.run)).values() if r["margin"] is not None]  # the retrieval threshold answered none
    again = swapped(args.adapter, args.index, Path(args.run), recs, Path(args.output))
    labels = np.array([not (r["answerable"] and r["gold"]) for r in recs])
    agree = np.array([agreement(r["raw"], again[r["id"]]["raw"]) for r in recs])
    m0 = np.array([r["margin"] for r in recs])
    m1 = np.array([again[r["id"]]["margin"] for r in recs])
    print(f"{args.run}: {len(recs)} questions that reached the generator ({int(labels.sum())} unanswerable); the same answer "
          f"(F1 1) with the passages reversed: {np.mean(agree[~labels] == 1):.1%} of answerable, {np.mean(agree[labels] == 1):.1%} "
          f"of unanswerable; ROC AUC: disagreement {roc_auc_score(labels, -agree):.3f}, the run's margin "
          f"{roc_auc_score(labels, m0):.3f}, the reversed order's {roc_auc_score(labels, m1):.3f}, their mean "
          f"{roc_auc_score(labels, m0 + m1):.3f}\n")
    print("| rule | overall F1 | HasAns F1 | NoAns acc. | false abstentions |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for rule, withheld in ((f"the margin over the stored threshold ({threshold:.2f})", m0 > threshold),
                           ("the mean of the two margins over it", (m0 + m1) / 2 > threshold),
                           ("the margin, or the answers differ at all", (m0 > threshold) | (agree < 1)),
                           ("the margin, or the answers share under half their words", (m0 > threshold) | (agree < 0.5))):
        fig = figures(recs, list(withheld))
        print(f"| {rule} | {100 * fig['overall']:.1f} | {100 * fig['has_f1']:.1f} | {100 * fig['noans']:.1f} | {100 * fig['fa']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
