"""How well adapters tell "yes" from "no" on a QA set's own yes/no questions, apart from their lean: each adapter's
polar score (log P(yes opening) - log P(no opening), ``Pipeline.polar_scores``, the prompt ``ask`` builds with its
retrieved passages, calibrate's retrieval settings) on every question ``ask`` would answer yes or no
(``polar.is_polar``) whose gold answer is yes or no, and from the
scores the yes-minus-no ROC AUC (with a 95% bootstrap interval over the questions), the accuracy and the share said
yes with no bias, and with the adapter's stored bias (``calibrate --task yes-no``). ``evaluate``'s yes/no accuracy
mixes the two: a model that says yes to everything is right as often as the gold answers are yes.

    .venv/bin/python scripts/polar_auc.py --index indexes/coqa_ood --qa corpus/coqa_ood/qa.json --answer-field answers \
        adapters/smollm2-disfl-qa runs/adapter-yes-no-short
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package


def auc(scores: list[float], gold: list[bool]) -> float | None:
    """P(a gold-yes question scores above a gold-no one), ties half; None with one class: ``calibrate``'s
    :func:`~rag_pipeline.eval.calibrate.roc_auc` with the no answers as its positives (as ``calibrate --task yes-no``)."""
    from rag_pipeline.eval.calibrate import roc_auc

    return roc_auc([-s for s in scores], gold)


def interval(scores: list[float], gold: list[bool], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of :func:`auc`, the questions resampled with replacement."""
    rng = random.Random(seed)
    n, values = len(scores), []
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        value = auc([scores[i] for i in pick], [gold[i] for i in pick])
        if value is not None:
            values.append(value)
    values.sort()
    if not values:
        return float("nan"), float("nan")
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def summary(scores: list[float], gold: list[bool], bias: float) -> dict:
    """The figures of one adapter's scores (see the module docstring)."""
    low, high = interval(scores, gold)
    n = len(gold)
    return {"questions": n, "gold_yes": sum(gold), "roc_auc": auc(scores, gold), "roc_auc_95": [low, high],
            "said_yes_at_zero": sum(s > 0 for s in scores) / n, "accuracy_at_zero": sum((s > 0) == g for s, g in zip(scores, gold)) / n,
            "bias": bias, "said_yes_at_bias": sum(s > bias for s in scores) / n,
            "accuracy_at_bias": sum((s > bias) == g for s, g in zip(scores, gold)) / n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("adapters", nargs="+", help="adapter directories (train-generator outputs)")
    p.add_argument("--index", required=True)
    p.add_argument("--qa", required=True)
    p.add_argument("--answer-field", default="")
    args = p.parse_args()

    from rag_pipeline.answer import polar
    from rag_pipeline.answer.ask import Pipeline
    from rag_pipeline.config import build_config
    from rag_pipeline.eval.calibrate import CalibrateConfig
    from rag_pipeline.metrics import yes_no_gold
    from rag_pipeline.qa import load_qa

    settings = {"index": args.index, "qa": args.qa, "answer_field": args.answer_field}
    cfg = build_config(CalibrateConfig, None, {**settings, "adapter": args.adapters[0]})  # the QA file's fields, read once
    items = [(it.question, yes_no_gold(it.answers)) for it in load_qa(cfg.qa, cfg.qa_fields())]
    items = [(q, g) for q, g in items if g is not None and polar.is_polar(q)]
    if len({g for _, g in items}) < 2:
        raise SystemExit(f"{args.qa}: {len(items)} yes/no questions, not both answers among them: nothing to rank")
    out = {}
    for adapter in args.adapters:
        pipe = Pipeline.load(build_config(CalibrateConfig, None, {**settings, "adapter": adapter}))
        scores = pipe.polar_scores([q for q, _ in items])
        out[adapter] = summary(scores, [g == "yes" for _, g in items], pipe.yes_no_bias)
        print(json.dumps({adapter: out[adapter]}), flush=True)
    width = max(len(a) for a in out)
    print(f"\n{'adapter':{width}}  questions  yes  ROC AUC (95% CI)       said yes / acc. at 0   bias    said yes / acc. at bias")
    for a, r in out.items():
        print(f"{a:{width}}  {r['questions']:9d}  {r['gold_yes']:3d}  {r['roc_auc']:.3f} ({r['roc_auc_95'][0]:.3f}-{r['roc_auc_95'][1]:.3f})"
              f"    {100 * r['said_yes_at_zero']:5.1f}% / {100 * r['accuracy_at_zero']:5.1f}%    {r['bias']:+.3f}"
              f"  {100 * r['said_yes_at_bias']:5.1f}% / {100 * r['accuracy_at_bias']:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
