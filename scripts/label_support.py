"""The support checker against hand labels: does a summary sentence's cited passage hold what it says?

``evaluate --task summary`` judges each sentence of a summary with the support checker
(``rag_pipeline.answer.summary.citation_quality``: the cited passages hold most of the sentence's
content words). This script measures that judge against a person's:

    .venv/bin/python scripts/label_support.py sample runs/eval-tasks-summary/predictions.jsonl \\
        --index indexes/disfl_qa --n 50 --out corpus/disfl_qa/labels/summary_support.jsonl
    # label: set "label" to true (the cited passages support the sentence) or false in each line
    .venv/bin/python scripts/label_support.py score corpus/disfl_qa/labels/summary_support.jsonl

``sample`` draws a seeded sample of cited sentences from the summaries of every system in the
predictions (sentences of the gold-passage reference are not included), each with the text of
the passages it cites and the checker's verdict (``checker``), and leaves ``label`` null.
``score`` prints the agreement, Cohen's kappa, and the checker's precision and recall against the
labels (supported = positive).
"""
import argparse
import json
import random
import sys
from pathlib import Path

from rag_pipeline.answer import summary
from rag_pipeline.index.format import read_manifest
from rag_pipeline.index.store import open_store


def sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists():  # it may hold hand labels: never written over
        sys.exit(f"{out} exists (it may hold hand labels): give another --out or remove it first")
    records = [json.loads(x) for x in Path(args.predictions).read_text().splitlines()]
    store = open_store(args.index, read_manifest(Path(args.index)))
    pool = []
    for r in records:
        if r["abstained"] or not r["prediction"]:
            continue
        for i, (text, cited) in enumerate(summary.sentences_of(r["prediction"])):
            if cited:
                pool.append((r, i, text, cited))
    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(pool, min(args.n, len(pool))), key=lambda x: (x[0]["system"], x[0]["id"], x[1]))
    lines = []
    for r, i, text, cited in chosen:
        passages = [store.get(d["id"]).text for d in r["documents"]]  # the chunks shown, in prompt order
        verdict = summary.citation_quality([(text, cited)], passages)[0]["supported"]
        lines.append({"system": r["system"], "id": r["id"], "sentence_index": i, "question": r["question"], "sentence": text,
                      "cited": cited, "cited_passages": {str(n): passages[n - 1] for n in cited if 1 <= n <= len(passages)},
                      "checker": bool(verdict), "label": None})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    print(f"{len(lines)} sentences of {len(pool)} -> {out}")


def score(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in Path(args.labels).read_text().splitlines()]
    missing = [r["id"] for r in rows if r["label"] is None]
    if missing:
        sys.exit(f"{len(missing)} sentences are not labelled yet (label null), e.g. {missing[:3]}: label every line first")
    n = len(rows)
    tp = sum(r["checker"] and r["label"] for r in rows)
    tn = sum(not r["checker"] and not r["label"] for r in rows)
    fp = sum(r["checker"] and not r["label"] for r in rows)
    fn = sum(not r["checker"] and r["label"] for r in rows)
    agree = (tp + tn) / n
    p_yes = ((tp + fp) / n) * ((tp + fn) / n) + ((tn + fn) / n) * ((tn + fp) / n)
    kappa = (agree - p_yes) / (1 - p_yes) if p_yes < 1 else 1.0
    print(f"{n} sentences: labelled supported {tp + fn}, checker says supported {tp + fp}")
    print(f"agreement {agree:.1%}, Cohen's kappa {kappa:.2f}; checker precision {tp / max(1, tp + fp):.1%}, recall {tp / max(1, tp + fn):.1%}")
    print(f"checker says supported, label says not: {fp}; checker says not, label says supported: {fn}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("predictions")
    s.add_argument("--index", default="indexes/disfl_qa")
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    c = sub.add_parser("score")
    c.add_argument("labels")
    args = p.parse_args()
    sample(args) if args.command == "sample" else score(args)


if __name__ == "__main__":
    main()
