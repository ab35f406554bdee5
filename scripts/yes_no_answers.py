"""How ``evaluate`` runs answered the yes/no questions of a QA set, beside their other questions: for each run, F1 on
the answerable questions whose gold answer is not yes or no, the yes/no accuracy, what was said to each gold answer
(yes, no, a span, an abstention), and, for the gold-"yes" questions answered yes or no, the share of the question's
content words found in its gold document (``rag_pipeline.support.word_share``). Yes/no as ``evaluate`` scores them:
a gold answer that is the word (``metrics.yes_no_gold``), an answer that opens with it (``metrics.polarity``). Each
later run's F1 on the other questions is compared with the first's, paired (``scripts/paired_f1.py``'s bootstrap).

    .venv/bin/python scripts/yes_no_answers.py --documents corpus/coqa_ood/documents.jsonl \
        runs/eval-ref-now-coqa/predictions.jsonl runs/eval-mix-scratch-coqa/predictions.jsonl

Reads the ``retrieved`` records of a file's one tuned system (``--system`` picks one where there are several).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "scripts"))

from paired_f1 import paired  # noqa: E402
from rag_pipeline.metrics import polarity, yes_no_gold  # noqa: E402
from rag_pipeline.support import word_share  # noqa: E402

FORMS = ("yes", "no", "span", "abstained")


def said(record: dict) -> str:
    """What the run answered: yes, no (an answer opening with the word), a span, or abstained."""
    return "abstained" if record["abstained"] else polarity(record["prediction"]) or "span"


def breakdown(records: list[dict], texts: dict[str, str]) -> dict:
    """The figures above for one run's records; ``texts``: document id -> its text (a gold-yes question whose
    document is not there is counted in ``no_document``, not in the word shares)."""
    polar, other = [], {}  # polar: (gold word, what was said, the record)
    for r in records:
        gold = yes_no_gold(r["gold"] or [])
        if gold:
            polar.append((gold, said(r), r))
        elif r["answerable"] and r["gold"]:
            other[r["id"]] = 0.0 if r["abstained"] else float(r["scores"]["f1"])
    table = collections.Counter((gold, word) for gold, word, _ in polar)
    share, no_document = collections.defaultdict(list), 0
    for gold, word, r in polar:
        if gold == "yes" and word in ("yes", "no"):
            if r.get("doc_id") in texts:
                share[word].append(word_share(r["question"], [texts[r["doc_id"]]]))
            else:
                no_document += 1
    return {"questions": len(records), "other": other, "other_f1": sum(other.values()) / len(other) if other else None,
            "yes_no": len(polar), "accuracy": (table[("yes", "yes")] + table[("no", "no")]) / len(polar) if polar else None,
            "table": {f"{g}->{s}": table[(g, s)] for g in ("yes", "no") for s in FORMS},
            "gold_yes_word_share": {s: (sum(v) / len(v), len(v)) for s, v in share.items()}, "no_document": no_document}


def run_records(path: str, system: str | None) -> list[dict]:
    """The ``retrieved`` records of one tuned system of an ``evaluate`` run (exits where there is none or several)."""
    with open(path, encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["context"] == "retrieved"]
    rows = [r for r in rows if (r["system"] == system if system else r["system"] != "base")]
    systems = sorted({r["system"] for r in rows})
    if len(systems) != 1:
        sys.exit(f"error: {path} holds {len(systems)} tuned systems{' (' + ', '.join(systems) + ')' if systems else ''} "
                 "with retrieved records: pick one with --system")
    return rows


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", nargs="+", help="evaluate runs' predictions.jsonl, on the same questions")
    ap.add_argument("--documents", required=True, help="the QA set's documents (jsonl with id and text)")
    ap.add_argument("--system", default=None, help="the system to read where a run holds several")
    args = ap.parse_args()
    with open(args.documents, encoding="utf-8") as f:
        texts = {d["id"]: d["text"] for d in map(json.loads, f)}
    print("| run | other questions | their F1 | against the first (95% CI) | yes/no questions | yes/no acc. | "
          "gold yes: yes / no / span / abstained | gold no: yes / no / span / abstained | "
          "gold yes said yes: word share | said no |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    first = None
    for path in args.predictions:
        b = breakdown(run_records(path, args.system), texts)
        first = first or b
        d = paired(first["other"], b["other"]) if b is not first and b["other"] else None
        against = f"{100 * d['diff']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]" if d else "-"
        cells = [" / ".join(str(b["table"][f"{g}->{s}"]) for s in FORMS) for g in ("yes", "no")]
        shares = [f"{100 * b['gold_yes_word_share'][s][0]:.0f}% ({b['gold_yes_word_share'][s][1]})"
                  if s in b["gold_yes_word_share"] else "-" for s in ("yes", "no")]
        print(f"| {path} | {len(b['other'])} | {pct(b['other_f1'])} | {against} | {b['yes_no']} | {pct(b['accuracy'])} | "
              f"{cells[0]} | {cells[1]} | {shares[0]} | {shares[1]} |")
        if b["no_document"]:
            print(f"  {path}: {b['no_document']} gold-yes questions without their document in --documents", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
