"""How often the answer reaches the prompt, for each way of choosing the prompt's passages.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/answer_in_context.py --index indexes/disfl_qa \
        --qa corpus/disfl_qa/qa/test.jsonl [--qa OTHER.json --index OTHER_INDEX ...]

For every answerable question of each QA file: retrieve (hybrid, as ``ask`` does), build the
prompt's passages each way, and count the questions whose gold answer is in them (whole words,
SQuAD normalization; for a free-form answer, content-word recall >= 0.5 of one passage; for a
yes/no answer, its record's ``rationale`` the same way), with the mean words shown. Ways: the top k chunks (k = 1..4); the top 5 re-ranked by the question's terms,
then 2; sentence windows (:func:`rag_pipeline.answer.focus.focus`) over the top n within the words of the
top 2 chunks (about the prompt budget ``ask`` uses at k = 2). ``ask --passages rerank|windows`` shows the
re-ranked and windowed ways (:func:`rag_pipeline.answer.focus.rerank`, ``focus``). Retrieval only: no generation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag_pipeline.answer.focus import Idf, focus, rerank, words_of  # noqa: E402
from rag_pipeline.metrics import yes_no_gold  # noqa: E402
from rag_pipeline.passage import Passage  # noqa: E402
from rag_pipeline.qa import load_qa  # noqa: E402
from rag_pipeline.index.retriever import Retriever  # noqa: E402
from rag_pipeline.support import is_short, recall  # noqa: E402
from rag_pipeline.textnorm import contains_answer  # noqa: E402


def holds(passages: list[Passage], answers: list[str]) -> bool:
    if yes_no_gold(answers) is not None:  # "yes" is not in the text: its evidence is (the record's rationale, see evidence())
        answers = [a for a in answers if yes_no_gold([a]) is None]
        if not answers:
            return False
    if any(contains_answer(p["text"], answers) for p in passages):
        return True
    return any(not is_short(a) and recall(a, p["text"]) >= 0.5 for a in answers for p in passages)


def ways(question: str, top: list[Passage], idf: Idf) -> dict[str, list[Passage]]:
    budget = words_of(top[:2])
    out = {f"chunks k={k}": top[:k] for k in (1, 2, 3, 4)}
    out["re-ranked top 5 -> 2"] = rerank(question, top[:5], idf, 2)
    for n in (3, 5, 8):
        out[f"windows over top {n} (budget of 2 chunks)"] = focus(question, top[:n], budget, idf)
    out["windows over top 5, window 0"] = focus(question, top[:5], budget, idf, window=0)
    out["windows over top 5 (budget of 3 chunks)"] = focus(question, top[:5], words_of(top[:3]), idf)
    return out


def evidence(path: Path) -> dict[str, str]:
    """A JSON QA file's ``rationale`` by record id (CoQA's evidence span): what must reach the
    prompt for a yes/no question."""
    if path.suffix != ".json":
        return {}
    return {r["id"]: r["rationale"] for r in json.loads(path.read_text(encoding="utf-8")) if r.get("rationale")}


def measure(index: str, qa: str, limit: int) -> None:
    r = Retriever.load(index)
    idf = Idf.of(c.text for c in r.store.iter_chunks())
    items = [it for it in load_qa(Path(qa)) if it.answerable and it.answers][: limit or None]
    rationale = evidence(Path(qa))
    items = [dataclasses.replace(it, answers=[*it.answers, rationale[it.id]]) if it.id in rationale and yes_no_gold(it.answers) else it
             for it in items]
    hits = r.search_batch([it.question for it in items], 8, hybrid=True)
    found: dict[str, list[bool]] = {}
    size: dict[str, list[int]] = {}
    for it, h in zip(items, hits):
        for name, ps in ways(it.question, [x.to_dict() for x in h], idf).items():
            found.setdefault(name, []).append(holds(ps, it.answers))
            size.setdefault(name, []).append(words_of(ps))
    print(f"\n{qa} on {index}: {len(items)} answerable questions")
    print(f"| passages | answer in context | mean words |\n| --- | ---: | ---: |")
    for name in found:
        print(f"| {name} | {100 * sum(found[name]) / len(items):.1f}% | {statistics.mean(size[name]):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", action="append", required=True, help="index directory (one per --qa, in order)")
    ap.add_argument("--qa", action="append", required=True, help="QA file (any format rag_pipeline.qa reads)")
    ap.add_argument("--limit", type=int, default=0, help="first N answerable questions of each file; 0 = all")
    a = ap.parse_args()
    if len(a.index) != len(a.qa):
        ap.error("give one --index per --qa")
    for index, qa in zip(a.index, a.qa):
        measure(index, qa, a.limit)


if __name__ == "__main__":
    main()
