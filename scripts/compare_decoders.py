#!/usr/bin/env python3
"""One question at a time, as ``ask "question"`` answers: the answers and null margins of the three decoders compared.

On the first ``--questions`` questions of a QA split, with the adapter ``ask`` chooses and its calibrated
abstention: the decode engine checking ``--draft-tokens`` guesses of prompt lookup a step (``ask``'s default),
the same engine one token a step (``--draft-tokens 0`` on ``serve``), and ``generate`` into a preallocated cache
(``ask --draft-tokens 0``). Prints seconds per question for each (retrieval, prompt and every decoding pass of
the calibrated path), and how many raw and shown answers differ between them, with the null margins' differences;
with ``--predictions``, how many answers an ``evaluate`` run gave in batches equal those asked alone.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/compare_decoders.py --questions 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--qa", default="corpus/disfl_qa/qa/test.jsonl")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--predictions", nargs="*", default=[],
                    help="evaluate's predictions.jsonl files: how many of their raw answers (decoded in batches) equal the "
                         "answers to the same questions asked alone (the default decoder's)")
    args = ap.parse_args()

    from rag_pipeline import batching
    from rag_pipeline.answer.ask import AskConfig, Pipeline

    with open(args.qa, encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in f][: args.questions]
    pipe = Pipeline.load(AskConfig(index=args.index, device="cpu"))
    print(f"# {len(questions)} questions of {args.qa}; {pipe.description}", file=sys.stderr)
    out = {}
    for name, draft in ((f"engine, --draft-tokens {args.draft_tokens}", args.draft_tokens), ("engine, one token a step", 0), ("generate", None)):
        pipe._own_engines = {1: batching.DecodeEngine(pipe.model, 1, draft) if draft is not None else False}  # one question's engine
        pipe.answer(questions[0])  # warm-up
        t = time.perf_counter()
        out[name] = [pipe.answer(q) for q in questions]
        print(f"{name}: {(time.perf_counter() - t) / len(questions):.3f} s a question")
    names = list(out)
    alone = {q: a.raw for q, a in zip(questions, out[names[0]])}
    for path in args.predictions:
        with open(path, encoding="utf-8") as f:
            batch = {r["question"]: r["raw"] for r in map(json.loads, f) if r["question"] in alone}
        print(f"{path}: raw answers equal to {names[0]} asked alone: {sum(batch[q] == alone[q] for q in batch)} of {len(batch)}")
    for a, b in ((names[0], names[2]), (names[1], names[2]), (names[0], names[1])):
        diffs = sorted(abs((x.margin or 0.0) - (y.margin or 0.0)) for x, y in zip(out[a], out[b]))
        print(f"{a} against {b}: raw answers differ {sum(x.raw != y.raw for x, y in zip(out[a], out[b]))}, shown "
              f"{sum(x.answer != y.answer for x, y in zip(out[a], out[b]))} of {len(questions)}; null margin |difference| "
              f"median {diffs[len(diffs) // 2]:.4f}, largest {diffs[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
