"""How ``evaluate`` runs answered the yes/no questions of a QA set, beside their other questions: for each run, F1 on
the questions whose gold answer is not yes or no, the yes/no accuracy, what was said to each gold answer (yes, no, a
span, an abstention), and, for the gold-"yes" questions answered yes or no, the share of the question's content words
found in its gold document (``rag_pipeline.support.word_share``): a reader that says yes only where the question's
words stand in the story reads the words, not the meaning.

    .venv/bin/python scripts/yes_no_answers.py --documents corpus/coqa_ood/documents.jsonl \
        runs/eval-reread-coqa/predictions.jsonl runs/eval-mix-coqa/predictions.jsonl

Reads the ``retrieved`` records of the tuned system of each file (``--system`` picks another).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing the package

from rag_pipeline.support import word_share  # noqa: E402

FORMS = ("yes", "no", "span", "abstained")


def said(record: dict) -> str:
    """What the run answered: yes, no, a span, or abstained."""
    if record["abstained"]:
        return "abstained"
    first = record["prediction"].strip().lower()
    return next((w for w in ("yes", "no") if first == w or first.startswith((w + " ", w + ",", w + "."))), "span")


def breakdown(records: list[dict], texts: dict[str, str]) -> dict:
    """The figures above for one run's records; ``texts``: document id -> its text."""
    polar = [r for r in records if r["gold"] and r["gold"][0].strip().lower() in ("yes", "no")]
    other = [r for r in records if r not in polar and r["answerable"] and r["gold"]]
    table = collections.Counter((r["gold"][0].strip().lower(), said(r)) for r in polar)
    share = collections.defaultdict(list)
    for r in polar:
        if r["gold"][0].strip().lower() == "yes" and said(r) in ("yes", "no"):
            share[said(r)].append(word_share(r["question"], [texts.get(r["doc_id"], "")]))
    return {"questions": len(records), "other": len(other),
            "other_f1": sum(0.0 if r["abstained"] else r["scores"]["f1"] for r in other) / max(len(other), 1),
            "yes_no": len(polar), "accuracy": sum(table[(g, g)] for g in ("yes", "no")) / max(len(polar), 1),
            "table": {f"{g}->{s}": table[(g, s)] for g in ("yes", "no") for s in FORMS},
            "gold_yes_word_share": {s: (sum(v) / len(v), len(v)) for s, v in share.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", nargs="+", help="evaluate runs' predictions.jsonl")
    ap.add_argument("--documents", required=True, help="the QA set's documents (jsonl with id and text)")
    ap.add_argument("--system", default=None, help="the system to read (default: the one that is not 'base')")
    args = ap.parse_args()
    texts = {d["id"]: d["text"] for d in map(json.loads, Path(args.documents).open(encoding="utf-8"))}
    print("| run | other questions | their F1 | yes/no questions | yes/no acc. | gold yes: yes / no / span / abstained | "
          "gold no: yes / no / span / abstained | gold yes said yes: word share | gold yes said no: word share |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for path in args.predictions:
        rows = [json.loads(line) for line in Path(path).open(encoding="utf-8")]
        rows = [r for r in rows if r["context"] == "retrieved" and (r["system"] == args.system if args.system else r["system"] != "base")]
        if not rows:
            sys.exit(f"error: {path} has no retrieved records{f' of system {args.system!r}' if args.system else ''}: check --system")
        b = breakdown(rows, texts)
        cells = [" / ".join(str(b["table"][f"{g}->{s}"]) for s in FORMS) for g in ("yes", "no")]
        shares = [f"{100 * b['gold_yes_word_share'][s][0]:.0f}% ({b['gold_yes_word_share'][s][1]})" if s in b["gold_yes_word_share"] else "-"
                  for s in ("yes", "no")]
        print(f"| {path} | {b['other']} | {100 * b['other_f1']:.1f} | {b['yes_no']} | {100 * b['accuracy']:.1f}% | {cells[0]} | {cells[1]} | "
              f"{shares[0]} | {shares[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
