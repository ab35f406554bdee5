"""Write the bundled corpus's dev and test paragraphs, with their human questions, as a user's folder for ``tune``.

The reference adapter trained on the train split's paragraphs only, so these 241 paragraphs (and their 1,635 questions)
are documents it never saw, of a domain it knows: the measure of ``tune`` on a few hundred documents with a QA file.

    .venv/bin/python scripts/disfl_heldout.py runs/disfl-heldout
    rag-pipeline tune runs/disfl-heldout/documents.jsonl --qa runs/disfl-heldout/questions.jsonl --output runs/tune-disfl --budget 30m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "disfl_qa"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", help="folder to write documents.jsonl and questions.jsonl into (created)")
    args = p.parse_args()
    rows = [json.loads(line) for split in ("dev", "test") for line in (CORPUS / "qa" / f"{split}.jsonl").read_text().splitlines()]
    keep = {r["doc_id"] for r in rows}
    docs = [d for d in map(json.loads, (CORPUS / "documents.jsonl").read_text().splitlines()) if d["id"] in keep]
    out = Path(args.output)
    taken = [out / n for n in ("documents.jsonl", "questions.jsonl") if (out / n).exists()]
    if taken:
        raise SystemExit(f"{taken[0]} exists: pass a new folder (this script never replaces a file)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{out}: {len(docs)} documents, {len(rows)} questions ({sum(not r['answerable'] for r in rows)} unanswerable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
