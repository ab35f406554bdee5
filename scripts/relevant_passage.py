#!/usr/bin/env python3
"""A run made with ``--reread off`` re-scored as ``ask --reread relevant`` answers: withheld, or read again.

Citation precision falls where an answer cites a shown passage holding fewer of the question's content words than
another shown passage (:func:`rag_pipeline.answer.check.misread`): the model read the wrong passage. For each answer
of an ``evaluate`` run that does, this script re-scores the run two ways, through ``evaluate``'s own scoring and
aggregation: the answer withheld, and the question answered again from the shown passages holding the most of the
question's words, as ``ask --reread relevant`` does (``answer_batch`` with those contexts under ask's default answering
settings, the stored threshold and the answer check among them; its citations numbered as the passages were first
shown, its margin the higher of the two). Runs of ``--passages chunks`` only (the passages are read back from the index):

    .venv/bin/python scripts/relevant_passage.py --adapter adapters/smollm2-disfl-qa --run runs/eval-dev-ref \\
        --output runs/relevant/dev.json

Only the questions it changes are decoded (cached in ``--output``, keyed by the adapter's weights, the index and the
run). A run's settings other than the defaults that matter to a second prompt are refused (``--answer-check``,
``--yes-no-questions``, ``--abstain-bias``, ``--reread``); ``--orders both`` and ``--abstain-probe`` do not apply to one
given passage (the probe read the first prompt), so such runs are re-scored as ``ask`` answers them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "scripts"))

from hidden_state_probe import cache_key  # noqa: E402
from operating_points import run_config  # noqa: E402
from rag_pipeline.answer.check import misread  # noqa: E402
from rag_pipeline.atomic import write_json  # noqa: E402


def reread(adapter: str, index: str, run: Path, todo: list[tuple[dict, list[dict], list[int]]], out: Path) -> dict[str, dict]:
    """Question id -> its answer from the passages most about it (``todo``: record, shown passages, their 0-based
    numbers), citations numbered as the passages were first shown; cached in ``out``."""
    key = cache_key(adapter, index, {"run": str(run.resolve()), "what": "reread"})
    cached: dict = {}
    if out.exists():
        try:
            cached = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            cached = {}
        if not isinstance(cached, dict) or cached.get("key") != key or not isinstance(cached.get("answers"), dict):
            sys.exit(f"error: {out} is not this script's answers for this adapter, index and run: pass another --output")
    answers = dict(cached.get("answers", {}))
    left = [t for t in todo if t[0]["id"] not in answers]
    if left:
        from rag_pipeline.answer import ask as A

        pipe = A.Pipeline.load(A.AskConfig(adapter=adapter, index=index))
        t0 = time.perf_counter()
        for start in range(0, len(left), 16):
            batch = left[start:start + 16]
            got = pipe.answer_batch([r["question"] for r, _, _ in batch], contexts=[[docs[j] for j in best] for _, docs, best in batch])
            for (r, docs, _), a in zip(batch, got):
                numbers = A.first_numbers(docs, a.retrieved)
                first, second = r["margin"], a.margin
                answers[r["id"]] = {"answer": a.answer if a.abstained else A.renumber(a.answer, numbers), "abstained": a.abstained,
                                    "abstain_reason": a.abstain_reason, "citations": [numbers[c.n] for c in a.citations],
                                    "margin": second if first is None or second is None else max(first, second),
                                    "fallback": None if a.abstained else "reread"}
            print(f"{start + len(batch)}/{len(left)} questions, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if left or not out.exists():
        write_json(out, {"key": key, "answers": answers})
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--run", required=True, help="an evaluate output folder made with --reread off (its predictions.jsonl)")
    ap.add_argument("--output", required=True, help="JSON: the answers read again (a cache) and the figures")
    args = ap.parse_args()

    from rag_pipeline.eval.evaluate import aggregate, score_answer
    from rag_pipeline.index.format import read_manifest
    from rag_pipeline.index.store import open_store
    from rag_pipeline.passage import from_chunk
    from rag_pipeline.qa import QAItem

    run = Path(args.run)
    config = run_config(run)
    differ = [f"--{k.replace('_', '-')} {config[k]}" for k, v in (("answer_check", "grounded"), ("yes_no_questions", "yes-or-no"),
              ("abstain_bias", 0.0), ("reread", "off"), ("passages", "chunks")) if k in config and config[k] != v]
    if differ:
        sys.exit(f"error: {run} was answered with {', '.join(differ)}; this script re-scores runs of the default settings "
                 "with --reread off")
    recs = [r for r in map(json.loads, (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines())
            if r.get("context", "retrieved") == "retrieved"]
    store = open_store(args.index, read_manifest(args.index))
    docs = {r["id"]: [from_chunk(store.get(d["id"]), None, n) for n, d in enumerate(r["documents"], 1)] for r in recs}
    picks = {r["id"]: best for r in recs if not r["abstained"]
             and (best := misread(r["question"], [d["text"] for d in docs[r["id"]]], r["citations"])) is not None}
    again = reread(args.adapter, args.index, run, [(r, docs[r["id"]], picks[r["id"]]) for r in recs if r["id"] in picks],
                   Path(args.output))

    def read_again(r: dict) -> dict:
        a = again[r["id"]]
        item = QAItem(r["id"], r["question"], r["gold"], r["doc_id"], r["answerable"])
        return {**r, "prediction": a["answer"], "abstained": a["abstained"], "abstain_reason": a["abstain_reason"], "margin": a["margin"],
                "citations": a["citations"], "rejected": "misread", "fallback": a["fallback"],
                "scores": score_answer(item, a["answer"], "", a["abstained"], a["citations"], docs[r["id"]])}

    def row(name: str, rs: list[dict]) -> dict:
        m = aggregate(rs, "retrieved")
        q = m["squad2"]
        return {"rule": name, "overall_f1": q["overall_f1"], "has_f1": q["has_f1"], "noans_acc": q["noans_acc"],
                "false_abstain": m["abstention"]["false_abstain_rate"], "cite_precision": m["citations"]["precision"],
                "answered": m["counts"]["answered"], "changed": len(picks) if rs is not recs else 0}

    withheld = [{**r, "abstained": True, "citations": []} if r["id"] in picks else r for r in recs]
    rows = [row("as run (--reread off)", recs), row("withheld", withheld), row("read again (--reread relevant)",
                                                                               [read_again(r) if r["id"] in picks else r for r in recs])]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print("| answers citing a passage less about the question | changed | overall F1 | HasAns F1 | NoAns acc. | false abstentions | cite prec. | answered |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in rows:
        print(f"| {x['rule']} | {x['changed']} | {pct(x['overall_f1'])} | {pct(x['has_f1'])} | {pct(x['noans_acc'])} | "
              f"{pct(x['false_abstain'])} | {pct(x['cite_precision'])} | {x['answered']} |")
    write_json(Path(args.output), {**json.loads(Path(args.output).read_text(encoding="utf-8")), "rows": rows})


if __name__ == "__main__":
    main()
