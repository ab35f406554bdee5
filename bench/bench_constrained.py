#!/usr/bin/env python3
"""Constrained decoding speed: summaries and JSON answers decoded under their grammar.

In one run, on the packaged SmolLM2-135M-Instruct (with the adapter ``ask`` would choose, or
``--no-adapter``) and prompts built from the bundled corpus's paragraphs (two passages per prompt,
as ``ask`` shows them):

1. ours: the grammar's mask applied per row and step (``generator.ConstrainedLogits``; the
   llguidance bitmask unpacked to a boolean mask);
2. baseline: transformers' ``prefix_allowed_tokens_fn`` (what ``generate`` offers), which takes a
   list of allowed ids per row and step: the same grammar, the same tokens;
3. free decoding of the same prompts, unconstrained, for the cost of the model alone.

It prints the wall time per decoded token, prompt reading included (greedy, ``--batch`` rows per
batch, the fastest of ``--repeats`` runs), for each task, and checks that 1 and 2 decode the same
tokens.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_constrained.py --prompts 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prompts(n: int) -> list[tuple[str, list[str]]]:
    """(question, two passages) from the bundled Disfl-QA dev split and its paragraphs."""
    docs = {}
    for line in (REPO / "corpus" / "disfl_qa" / "documents.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        docs[d["id"]] = d["text"]
    rows = [json.loads(x) for x in (REPO / "corpus" / "disfl_qa" / "qa" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    ids = list(docs)
    out = []
    for i, r in enumerate(r for r in rows if r.get("doc_id") in docs):
        if len(out) == n:
            break
        other = ids[(ids.index(r["doc_id"]) + 7) % len(ids)]
        out.append((r["question"], [docs[r["doc_id"]][:700], docs[other][:700]]))
    return out


def timed(fn, repeats: int) -> tuple[float, list]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-adapter", action="store_true")
    args = ap.parse_args()

    import torch

    from rag_pipeline import generator
    from rag_pipeline.answer import structured, summary
    from rag_pipeline.data.tasks import EXTRACT_SCHEMA
    from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
    from rag_pipeline.prompt import get_template, model_text_fn, render_user

    adapter = None if args.no_adapter or not Path(REFERENCE_ADAPTER).is_dir() else REFERENCE_ADAPTER
    model, tok, kind = generator.load_generator(SMOLLM2_ID, adapter, device="cpu", dtype="float32", merge=True)
    template = get_template("raft-v1")
    to_text = model_text_fn(tok, template)
    cases = prompts(args.prompts)
    schema = structured.canonical(EXTRACT_SCHEMA)
    tasks = {
        "summary": ([to_text(render_user(template, summary.instruction(q), [{"title": "", "text": p} for p in ps])) for q, ps in cases],
                    lambda n_docs=2: summary.constraint(tok, n_docs), 160),
        "extract": ([to_text(render_user(template, structured.instruction(q, EXTRACT_SCHEMA), [{"title": "", "text": p} for p in ps]))
                     for q, ps in cases], lambda: structured.json_constraint(tok, schema), 128),
    }
    real_kwargs = generator._constraint_kwargs

    def lists(rows, offset, beams, vocab):  # transformers' own route: a list of allowed ids per row and step
        return real_kwargs(rows, offset, 2, vocab)

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"adapter {adapter or 'none'}, {len(cases)} prompts, batch {args.batch}")
    print(f"{'task':<9}{'route':<26}{'tokens':>8}{'ms/token':>10}{'vs ours':>9}   (wall time / decoded tokens, prompts included)")
    for name, (texts, make, max_new) in tasks.items():
        counts = [generator.DecodeCounts() for _ in texts]

        def run(route: str) -> list[str]:
            generator._constraint_kwargs = real_kwargs if route == "ours" else lists
            try:
                cons = None if route == "free" else [make() for _ in texts]
                return generator.generate_answers(model, tok, kind, texts, max_new_tokens=max_new, batch_size=args.batch,
                                                  constraints=cons, counts=counts)
            finally:
                generator._constraint_kwargs = real_kwargs

        results = {}
        for route in ("ours", "lists", "free"):
            for c in counts:
                c.completion_tokens = 0
            seconds, outs = timed(lambda route=route: run(route), args.repeats)
            tokens = sum(c.completion_tokens for c in counts) // args.repeats
            results[route] = (seconds, outs, max(tokens, 1))
        if results["ours"][1] != results["lists"][1]:
            print(f"{name}: the two constrained routes decoded different answers", file=sys.stderr)
            return 1
        base = results["ours"][0] / results["ours"][2]
        for route, label in (("ours", "mask per row (ours)"), ("lists", "prefix_allowed_tokens_fn"), ("free", "free (no grammar)")):
            seconds, _, tokens = results[route]
            per = seconds / tokens
            print(f"{name:<9}{label:<26}{tokens:>8}{1000 * per:>10.2f}{per / base:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
