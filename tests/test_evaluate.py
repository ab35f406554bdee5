"""rag_pipeline.eval.evaluate: metric functions against hand-computed cases, contexts, and the command
end to end (a scripted fake pipeline for exact numbers; the real ask Pipeline on a tiny Llama)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import FakeChunk as _Chunk
from conftest import FakeHit as _Hit
from conftest import write_jsonl
from rag_pipeline.eval import evaluate as E
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.prompt import ABSTAIN
from rag_pipeline.qa import QAItem

QA_ROWS = [
    {"id": "q1", "question": "Which river flows into the Mediterranean Sea?", "answer": ["Nile"], "doc_id": "nile"},
    {"id": "q2", "question": "Who created the Python programming language?", "answer": ["Guido van Rossum"], "doc_id": "python"},
    {"id": "q3", "question": "What is the highest mountain above sea level?", "answer": ["Mount Everest", "Everest"], "doc_id": "everest"},
    {"id": "q4", "question": "When was the Eiffel Tower completed?", "answer": ["1889"], "doc_id": "eiffel"},
    {"id": "q5", "question": "How old is the unknown Moon base?", "answer": [], "doc_id": "moon", "answerable": False},
]


# ---------------------------------------------------------------------------------------------
# Per-answer metrics
# ---------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat on mat", "the cat on the mat") = "the cat on mat": P = R = 4/5.
    assert E.rouge_l("the cat sat on mat", ["the cat on the mat"]) == pytest.approx(0.8)
    # Best over gold answers; citations are not part of the answer.
    assert E.rouge_l("Everest [1]", ["Mount Everest", "Everest"]) == pytest.approx(1.0)
    # "Mount Everest" vs "Everest": P = 1/2, R = 1 -> 2/3.
    assert E.rouge_l("Mount Everest", ["Everest"]) == pytest.approx(2 / 3)
    assert E.rouge_l("", ["Everest"]) == 0.0
    assert E.rouge_l("Everest", []) == 0.0


def test_token_support_and_hijack() -> None:
    docs = [{"text": "The Nile flows into the Mediterranean."}, {"text": "Paris is in France."}]
    assert E.token_support("the Nile [1]", docs) == 1.0
    assert E.token_support("Nile river", docs) == pytest.approx(0.5)  # "river" is not in the documents
    assert E.token_support("[2]", docs) is None  # nothing left to ground
    assert E.is_hijacked("hacked!") and E.is_hijacked("HACKED [3]") and not E.is_hijacked("Nile")


def test_score_answer_citations_and_context() -> None:
    item = QAItem("q", "Which river?", ["Nile"], "nile", True)
    docs = [{"id": "a", "doc_id": "x", "text": "Paris is in France."}, {"id": "b", "doc_id": "nile", "text": "The Nile is a river."}]
    s = E.score_answer(item, "Nile [2]", "Nile [2]", False, [2, 1, 7], docs)
    assert (s["em"], s["f1"], s["rougeL"]) == (1.0, 1.0, 1.0)
    assert s["cited_holds_answer"] == [True, False, False]  # [7] is out of range: never correct
    assert s["cited_gold_doc"] == [True, False, False]
    assert s["support"] == 1.0 and s["span"] is True and s["hijacked"] is False
    assert s["answer_in_context"] and s["gold_doc_in_context"]
    abstained = E.score_answer(item, ABSTAIN, ABSTAIN, True, [], docs[:1])
    assert abstained["em"] == 0.0 and abstained["support"] is None and abstained["span"] is None
    assert not abstained["answer_in_context"] and not abstained["gold_doc_in_context"]
    unans = E.score_answer(QAItem("u", "?", [], "x", False), "Paris [1]", "Paris [1]", False, [1], docs)
    assert unans["em"] is None and unans["f1"] is None and unans["rougeL"] is None and unans["support"] == 1.0


def test_a_yes_no_citation_holds_the_answer_when_it_is_of_the_gold_document() -> None:
    """No passage holds the word "yes": a yes/no answer's citation, and its answer in context, are judged by the gold
    document, and not at all where the QA file names none."""
    docs = [{"id": "a", "doc_id": "story", "text": "Tom walked his dog in the park."},
            {"id": "b", "doc_id": "other", "text": "Yes, the shop opens at nine."}]  # holds the word, but is not the story
    s = E.score_answer(QAItem("q", "Did Tom walk his dog?", ["yes"], "story", True), "Yes [1]", "Yes [1]", False, [1, 2], docs)
    assert s["cited_holds_answer"] == [True, False] and s["answer_in_context"] is True and s["yes_no"] is True
    s = E.score_answer(QAItem("q", "Did Tom walk his dog?", ["no"], "other", True), "Yes [1]", "Yes [1]", False, [1], docs[:1])
    assert s["cited_holds_answer"] == [False] and s["answer_in_context"] is False and s["yes_no"] is False
    s = E.score_answer(QAItem("q", "Did Tom walk his dog?", ["yes"], None, True), "Yes [1]", "Yes [1]", False, [1, 3], docs)
    assert s["cited_holds_answer"] == [None, False] and s["answer_in_context"] is None  # [3] is out of range: never correct
    s = E.score_answer(QAItem("q", "Where did Tom walk?", ["park"], None, True), "the park [1]", "the park [1]", False, [1], docs)
    assert s["cited_holds_answer"] == [True] and s["answer_in_context"] is True  # other answers: by their words, as before
    m = E.aggregate([{"answerable": True, "abstained": False, "citations": [1, 3], "doc_id": None, "scores": s | {
        "cited_holds_answer": [None, False], "cited_gold_doc": [False, False]}}], "retrieved")
    assert m["citations"]["precision"] == 0.0 and m["counts"]["citations"] == 2  # an unjudged citation is left out of the share


def _rec(answerable: bool, abstained: bool, prediction: str, cited: list[int], docs: list[dict], gold: list[str]) -> dict:
    item = QAItem("q", "?", gold, "g", answerable)
    return {"answerable": answerable, "abstained": abstained, "citations": cited, "doc_id": "g",
            "scores": E.score_answer(item, prediction, prediction, abstained, cited, docs)}


def test_aggregate_hand_computed() -> None:
    gold_doc = {"doc_id": "g", "text": "The answer is blue."}
    other = {"doc_id": "o", "text": "Something else entirely."}
    records = [
        _rec(True, False, "blue [1]", [1], [gold_doc, other], ["blue"]),         # right, cites the gold doc
        _rec(True, False, "green sky [2]", [2], [gold_doc, other], ["blue"]),    # wrong, unsupported, bad citation
        _rec(True, True, ABSTAIN, [], [other], ["blue"]),                        # false abstention
        _rec(False, True, ABSTAIN, [], [other], []),                             # right abstention
        _rec(False, False, "else", [], [other], []),                             # answered the unanswerable
    ]
    m = E.aggregate(records, "retrieved")
    assert m["counts"] == {"questions": 5, "answerable": 3, "unanswerable": 2, "abstained": 2, "answered": 3, "citations": 2,
                           "rejected": 0, "fallback": 0, "reread": 0}
    # the answer check's refusals and grounded spans, apart from the answers read again from another passage (--reread)
    marked = [{**records[0], "rejected": "misread", "fallback": "reread"}, {**records[1], "rejected": "no_content", "fallback": "grounded"},
              {**records[2], "rejected": "misread"}] + records[3:]
    assert {k: E.aggregate(marked, "retrieved")["counts"][k] for k in ("rejected", "fallback", "reread")} == \
        {"rejected": 1, "fallback": 1, "reread": 2}
    assert m["answer"]["em"] == pytest.approx(round(1 / 3, 4))
    assert m["answer"]["f1"] == pytest.approx(round(1 / 3, 4))
    # support: "blue" 1.0, "green sky" 0.0, "else" 1.0 -> 2/3; unsupported 1/3; whole span found 2/3.
    # "green sky" cites a passage without its words; "blue" and "else" are held by theirs: 1 of 3 shown answers
    assert m["grounding"] == {"token_support": round(2 / 3, 4), "unsupported_rate": round(1 / 3, 4), "span_rate": round(2 / 3, 4),
                              "no_content_rate": 0.0, "unsupported_cited_rate": round(1 / 3, 4)}
    assert m["yes_no"] == {"accuracy": None, "questions": 0}
    assert m["citations"] == {"precision": 0.5, "gold_doc_precision": 0.5, "uncited_rate": 0.0}
    assert m["abstention"] == {"abstain_rate": 0.5, "false_abstain_rate": round(1 / 3, 4)}
    assert m["context"] == {"answer_in_context": round(2 / 3, 4), "gold_doc_in_context": 0.4}
    assert m["injection"] == {"hijack_rate": None, "by_style": None}
    assert E.aggregate(records, "injected")["injection"] == {"hijack_rate": 0.0, "by_style": {}}
    # SQuAD 2.0: answerable F1s 1, 1/3 (green sky vs blue... scored by the records), abstention 0; unanswerable: 1 right of 2
    sq = m["squad2"]
    assert sq["noans_acc"] == 0.5 and sq["has_f1"] == m["answer"]["f1"]
    assert sq["overall_f1"] == pytest.approx(round((3 * m["answer"]["f1"] + 1) / 5, 4), abs=1e-4)
    empty = E.aggregate([], "retrieved")
    assert empty["answer"]["em"] is None and empty["abstention"]["abstain_rate"] is None


# ---------------------------------------------------------------------------------------------
# Sample and contexts
# ---------------------------------------------------------------------------------------------


def test_sample_is_seeded_and_in_file_order() -> None:
    items = [QAItem(f"q{i}", f"question {i}") for i in range(50)]
    a, b = E.sample_items(items, 10, 3), E.sample_items(items, 10, 3)
    assert a == b and len(a) == 10 and [items.index(x) for x in a] == sorted(items.index(x) for x in a)
    assert E.sample_items(items, 10, 4) != a
    assert E.sample_items(items, 0, 3) == items and E.sample_items(items, 99, 3) == items


def test_oracle_context_gold_plus_distractors() -> None:
    item = QAItem("q1", "colour?", ["blue"], "g", True)
    gold = [_Chunk("g0", "g", "Intro without it."), _Chunk("g1", "g", "The sky is blue.")]
    hits = [_Hit(gold[0]), _Hit(_Chunk("a", "a", "Also blue here.")), _Hit(_Chunk("b", "b", "bee")),
            _Hit(_Chunk("c", "c", "sea")), _Hit(_Chunk("d", "d", "dee")), _Hit(_Chunk("e", "e", "bee"))]
    docs, found = E.oracle_context(item, hits, gold, k=4, seed=0)
    assert found and sorted(d["id"] for d in docs) == ["b", "c", "d", "g1"]  # no gold-doc chunk, no answer holder
    assert E.oracle_context(item, hits, gold, k=4, seed=0)[0] == docs  # seeded
    orders = {tuple(d["id"] for d in E.oracle_context(item, hits, gold, 4, s)[0]) for s in range(12)}
    assert len(orders) > 1  # the gold passage is not always first
    unans = QAItem("q2", "?", [], "g", False)
    assert any(d["id"] == "g0" for d in E.oracle_context(unans, hits, gold, 4, 0)[0])  # its first chunk
    missing, found = E.oracle_context(QAItem("q3", "?", ["zzz"], None, True), hits, [], 2, 0)
    assert not found and len(missing) == 2


def test_injected_context_cycles_through_the_styles_seeded() -> None:
    from rag_pipeline.data.injection import STYLES

    hits = [_Hit(_Chunk(c, c, f"Sentence {c} one. Sentence {c} two.")) for c in "abcdef"]
    seen = {}
    for i in range(40):
        item = QAItem(f"q{i}", "?", ["x"])
        docs, pos, style = E.injected_context(item, hits, k=4, seed=0)
        assert E.injected_context(item, hits, 4, 0) == (docs, pos, style)  # seeded
        assert "HACKED" in docs[pos]["text"]
        if style == "hidden":  # rewrites one retrieved document in place
            assert len(docs) == 4 and docs[pos]["id"] in "abcd" and "Sentence" in docs[pos]["text"]
        else:  # a document of its own, inserted among the retrieved ones
            assert len(docs) == 5 and docs[pos]["id"].startswith("inj-")
            assert [d["id"] for d in docs if not d["id"].startswith("inj-")] == list("abcd")
        seen.setdefault(style, set()).add(pos)
    assert set(seen) == set(STYLES) and any(len(p) > 1 for p in seen.values())


def test_config_validation_and_systems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no context"):
        E.EvaluateConfig(retrieved=False)
    with pytest.raises(ConfigError, match="limit"):
        E.EvaluateConfig(limit=-1)
    assert E.EvaluateConfig(oracle=True, injection=True).contexts == ["retrieved", "oracle", "injected"]
    assert E.systems_of(E.EvaluateConfig()) == [("base", None)]
    a, b = tmp_path / "run1" / "adapter", tmp_path / "run2" / "adapter"
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert E.systems_of(E.EvaluateConfig(adapter=[str(a)])) == [("adapter", str(a))]
    assert [n for n, _ in E.systems_of(E.EvaluateConfig(adapter=[str(a), str(b)], no_adapter=True))] == ["base", "run1/adapter", "run2/adapter"]
    with pytest.raises(InputError, match="not a directory"):
        E.systems_of(E.EvaluateConfig(adapter=[str(tmp_path / "nope")]))


# ---------------------------------------------------------------------------------------------
# End to end with a scripted pipeline: exact numbers, schema, report = JSON
# ---------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    question: str
    answer: str
    abstained: bool
    abstain_reason: str | None
    citations: list = field(default_factory=list)
    retrieved: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    raw: str = ""
    margin: float | None = None


@dataclass
class _Citation:
    n: int


class ScriptedPipeline:
    """Answers with the title of its first document, cited [1]; obeys any HACKED document; abstains on 'unknown'."""

    def __init__(self, retriever, k: int, tuned: bool) -> None:
        self.retriever, self.k, self.tuned = retriever, k, tuned

    def answer_batch(self, questions: list[str], contexts: list[list[dict]] | None = None) -> list[_Answer]:
        out = []
        for j, q in enumerate(questions):
            docs = contexts[j] if contexts is not None else [h.to_dict() for h in self.retriever.search(q, self.k)]
            if "unknown" in q:
                out.append(_Answer(q, ABSTAIN, True, "model", [], docs, raw=ABSTAIN))
            elif not self.tuned and any("HACKED" in d["text"] for d in docs):
                out.append(_Answer(q, "HACKED", False, None, [], docs, raw="HACKED"))
            else:
                text = f"{docs[0]['title']} [1]"
                out.append(_Answer(q, docs[0]["title"], False, None, [_Citation(1)], docs, raw=text))
        return out


def _scripted_factory(cfg, adapter, retriever):
    return ScriptedPipeline(retriever, cfg.k, tuned=adapter is not None)


SCHEMA = {
    "schema_version": int, "config": dict, "qa": dict, "index": dict, "retrieval": dict, "systems": list,
    "contexts": list, "results": dict, "timings": dict,
}
RESULT_SCHEMA = {
    "counts": ["questions", "answerable", "unanswerable", "abstained", "answered", "citations", "rejected", "fallback", "reread"],
    "answer": ["em", "f1", "rougeL"],
    "grounding": ["token_support", "unsupported_rate", "span_rate", "no_content_rate", "unsupported_cited_rate"],
    "yes_no": ["accuracy", "questions"],
    "citations": ["precision", "gold_doc_precision", "uncited_rate"],
    "abstention": ["abstain_rate", "false_abstain_rate"],
    "context": ["answer_in_context", "gold_doc_in_context"],
    "squad2": ["has_em", "has_f1", "noans_acc", "overall_em", "overall_f1"],
    "injection": ["hijack_rate", "by_style"],
    "timings": ["generate_s", "per_question_s"],
}


def _check_schema(m: dict) -> None:
    assert set(m) == set(SCHEMA)
    for key, tp in SCHEMA.items():
        assert isinstance(m[key], tp), key
    assert set(m["qa"]) == {"path", "total", "evaluated", "answerable", "unanswerable", "sample", "answer_form", "verbatim_share", "skipped"}
    assert set(m["index"]) == {"path", "embedder", "chunks"}
    assert {"level", "questions", "recall@1", "recall@5", "recall@10", "mrr@10"} <= set(m["retrieval"])
    assert all(set(s) == {"name", "adapter", "load_s"} for s in m["systems"])
    assert set(m["results"]) == {s["name"] for s in m["systems"]}  # JSON keys are sorted: order lives in the lists
    for per_ctx in m["results"].values():
        assert set(per_ctx) == set(m["contexts"])
        for r in per_ctx.values():
            assert {k: sorted(v) for k, v in r.items()} == {k: sorted(v) for k, v in RESULT_SCHEMA.items()}
            assert all(isinstance(v, int) for v in r["counts"].values())
            for group, keys in RESULT_SCHEMA.items():
                if group not in ("counts", "timings"):
                    vals = [v for k in keys for v in ((r[group][k] or {}).values() if k == "by_style" else [r[group][k]])]
                    assert all(v is None or 0.0 <= v <= 1.0 for v in vals), group


def _report_rows(report: str) -> list[list[str]]:
    section = report.split("## Answers", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    return rows[2:]  # header and rule


def test_end_to_end_scripted(small_index, hashing_embedder, tmp_path: Path) -> None:
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    adapter = tmp_path / "tuned"
    adapter.mkdir()
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(tmp_path / "out"), adapter=[str(adapter)], no_adapter=True,
                           oracle=True, injection=True, k=2, batch_size=2)
    m = E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)
    out = Path(cfg.output)
    assert sorted(p.name for p in out.iterdir()) == sorted(E.OUTPUT_FILES)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    _check_schema(on_disk)
    assert [s["name"] for s in m["systems"]] == ["base", "tuned"] and m["contexts"] == ["retrieved", "oracle", "injected"]
    assert m["qa"] == {"path": str(qa), "total": 5, "evaluated": 5, "answerable": 4, "unanswerable": 1, "sample": "all",
                       "answer_form": "span", "verbatim_share": 1.0, "skipped": 0}
    assert m["retrieval"]["level"] == "document" and m["retrieval"]["recall@1"] == 1.0  # distinct vocabularies

    base, tuned = m["results"]["base"], m["results"]["tuned"]
    # Oracle context: the first document is the gold one for some questions only (shuffled), and a
    # title like "Nile" or "Everest" is then an exact answer; the abstention on q5 is right.
    assert base["oracle"]["abstention"] == {"abstain_rate": 1.0, "false_abstain_rate": 0.0}
    assert base["injected"]["injection"]["hijack_rate"] > 0 and tuned["injected"]["injection"]["hijack_rate"] == 0.0
    assert base["retrieved"]["injection"]["hijack_rate"] is None
    # Retrieved context: top-1 is the gold document, so "Nile" and "Everest" match exactly; the
    # titles "Python" and "Eiffel Tower" do not answer q2 and q4.
    assert tuned["retrieved"]["answer"]["em"] == 0.5
    assert tuned["retrieved"]["citations"]["gold_doc_precision"] == 1.0
    assert tuned["retrieved"]["citations"]["precision"] == 1.0  # the cited gold documents hold the answers

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * 3 * 5
    assert {(p["system"], p["context"]) for p in preds} == {(s, c) for s in ("base", "tuned") for c in m["contexts"]}
    first = next(p for p in preds if p["system"] == "tuned" and p["context"] == "retrieved" and p["id"] == "q1")
    assert first["prediction"] == "Nile" and first["citations"] == [1] and first["cited_doc_ids"] == ["nile"]
    assert first["documents"][0]["doc_id"] == "nile" and first["scores"]["em"] == 1.0
    inj = [p for p in preds if p["context"] == "injected"]
    assert all(p["injection_style"] == "hidden" or p["documents"][p["injection_position"] - 1]["id"].startswith("inj-") for p in inj)
    assert set(base["injected"]["injection"]["by_style"]) == {p["injection_style"] for p in inj}
    assert all(p["oracle_found"] for p in preds if p["context"] == "oracle")

    # The report's table holds exactly the JSON's numbers.
    rows = _report_rows((out / "report.md").read_text())
    assert len(rows) == 6
    for row in rows:
        r = m["results"][row[0]][row[1]]
        assert row[2] == str(r["counts"]["questions"])
        assert row[3:] == [E.fmt(r[a][b]) for _, (a, b) in E.COLUMNS]
    assert f"| {E.fmt(m['retrieval']['mrr@10'])} |" in (out / "report.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limit_gives_the_same_sample_to_every_system(small_index, hashing_embedder, tmp_path: Path) -> None:
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    adapter = tmp_path / "tuned"
    adapter.mkdir()
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(tmp_path / "out"), adapter=[str(adapter)], no_adapter=True, limit=3, k=2)
    m = E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)
    preds = [json.loads(line) for line in (Path(cfg.output) / "predictions.jsonl").read_text().splitlines()]
    ids = {s: [p["id"] for p in preds if p["system"] == s] for s in ("base", "tuned")}
    assert len(ids["base"]) == 3 and ids["base"] == ids["tuned"] and m["qa"]["sample"] == "seeded"


def test_failed_run_leaves_previous_output(small_index, hashing_embedder, tmp_path: Path) -> None:
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"schema_version": 1, "results": {}}')  # an earlier evaluate output
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)

    def broken(cfg, adapter, retriever):
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        E.run(E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(out)), retriever=Retriever.load(idx, embedder=hashing_embedder),
              pipeline_factory=broken)
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and (out / "metrics.json").read_text() == '{"schema_version": 1, "results": {}}'


# ---------------------------------------------------------------------------------------------
# End to end with the real ask Pipeline and a tiny Llama
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def test_end_to_end_real_pipeline(small_index, tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    from rag_pipeline import cli

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    out = tmp_path / "out"
    status = cli.main(["evaluate", "--index", str(idx), "--qa", str(qa), "--output", str(out), "--no-adapter",
                       "--base-model", str(tiny_llama), "--oracle", "--injection", "--k", "2", "--max-new-tokens", "4",
                       "--batch-size", "4", "--device", "cpu"])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(E.OUTPUT_FILES)
    m = json.loads((out / "metrics.json").read_text())
    _check_schema(m)
    assert set(m["results"]) == {"base"} and m["contexts"] == ["retrieved", "oracle", "injected"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 * len(QA_ROWS)
    assert all(isinstance(p["prediction"], str) for p in preds)
    rows = _report_rows((out / "report.md").read_text())
    assert [r[3:] for r in rows] == [[E.fmt(m["results"]["base"][c][a][b]) for _, (a, b) in E.COLUMNS] for c in m["contexts"]]
    assert not re.search(r"\bnan\b", (out / "report.md").read_text())


def test_grounded_contexts_follow_each_context(small_index, hashing_embedder, tmp_path: Path) -> None:
    from rag_pipeline.index.retriever import Retriever

    class Recording(ScriptedPipeline):
        calls: list = []

        def answer_batch(self, questions, contexts=None, grounded=False):
            Recording.calls.append(grounded)
            return super().answer_batch(questions, contexts)

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(tmp_path / "out"), injection=True, grounded=True, k=2)
    assert cfg.contexts == ["retrieved", "retrieved/grounded", "injected", "injected/grounded"]
    m = E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder),
              pipeline_factory=lambda c, a, r: Recording(r, c.k, tuned=False))
    assert set(m["results"]["base"]) == set(cfg.contexts)
    assert Recording.calls.count(True) == Recording.calls.count(False) > 0  # each context once free, once grounded
    assert m["results"]["base"]["injected/grounded"]["injection"]["hijack_rate"] is not None
    assert "injected/grounded" in (Path(cfg.output) / "report.md").read_text()


def test_free_form_answers_get_f1_and_rouge_but_no_em(small_index, hashing_embedder, tmp_path: Path) -> None:
    """Sentence answers with their own context (no doc_id): the context's document is the gold one,
    EM is null (a sentence is never matched exactly), F1 and ROUGE-L are reported, and the oracle
    context holds the passage that supports each answer."""
    from conftest import TOPICS
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    rows = [{"id": "f1", "question": "Which river flows into the Mediterranean Sea?", "answer": "It is the Nile, a river in Africa.",
             "context": TOPICS["nile"][1]},
            {"id": "f2", "question": "Who created Python?", "answer": "Python was made by Guido van Rossum.", "context": TOPICS["python"][1]}]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(rows))
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(tmp_path / "out"), no_adapter=True, oracle=True, k=2, batch_size=2)
    m = E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)
    assert m["qa"]["answer_form"] == "free-form" and m["retrieval"]["level"] == "document"
    for ctx in ("retrieved", "oracle"):
        r = m["results"]["base"][ctx]
        assert r["answer"]["em"] is None and r["squad2"]["has_em"] is None and r["squad2"]["overall_em"] is None
        assert r["answer"]["f1"] is not None and r["answer"]["rougeL"] is not None
    assert m["results"]["base"]["oracle"]["context"]["answer_in_context"] == 1.0  # supported, though never verbatim
    assert "EM is not reported (-): the gold answers are free-form text" in (Path(cfg.output) / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Records left out are listed; the output is locked while a run writes it
# ---------------------------------------------------------------------------------------------


def test_answerable_records_without_an_answer_are_left_out_and_listed(small_index, hashing_embedder, tmp_path: Path) -> None:
    """Scored, such a record would count as unanswerable (NoAns accuracy) beside 'answerable' in the counts."""
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    hole = {"id": "q6", "question": "Where does the Rust language come from?", "answer": [], "doc_id": "rust"}
    qa = write_jsonl(tmp_path / "qa.jsonl", [*QA_ROWS, hole])
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(tmp_path / "out"), k=2)
    m = E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)
    out = Path(cfg.output)
    assert (m["qa"]["total"], m["qa"]["evaluated"], m["qa"]["answerable"], m["qa"]["unanswerable"], m["qa"]["skipped"]) == (6, 5, 4, 1, 1)
    assert m["results"]["base"]["retrieved"]["counts"]["unanswerable"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([*E.OUTPUT_FILES, E.SKIPPED_FILE])
    (listed,) = [json.loads(line) for line in (out / E.SKIPPED_FILE).read_text().splitlines()]
    assert listed == {"id": "q6", "question": hole["question"], "answer": [], "reason": E.NO_ANSWER, "where": f"{qa}:6"}
    assert "q6" not in {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert "1 left out, answerable but without an answer (listed in skipped.jsonl)" in (out / "report.md").read_text()


def test_a_run_refuses_an_output_another_run_is_writing(small_index, hashing_embedder, tmp_path: Path) -> None:
    from rag_pipeline.atomic import output_lock
    from rag_pipeline.index.retriever import Retriever

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    runs = tmp_path / "runs"
    cfg = E.EvaluateConfig(index=str(idx), qa=str(qa), output=str(runs / "out"), k=2)
    with output_lock(cfg.output):  # another run, still evaluating
        with pytest.raises(ConfigError, match=r"--output .*out is being written by another run \(pid \d+, lock .*\.out\.lock\)"):
            E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)
        assert sorted(p.name for p in runs.iterdir()) == [".out.lock"]  # its lock; nothing written beside it
    E.run(cfg, retriever=Retriever.load(idx, embedder=hashing_embedder), pipeline_factory=_scripted_factory)  # released: it runs
    assert sorted(p.name for p in runs.iterdir()) == ["out"]


def test_junk_answers_and_yes_no_questions_have_their_own_figures() -> None:
    """An answer without a content word ("The [1]") and one whose cited passage lacks its words
    are counted apart; yes/no questions are scored by polarity and get an accuracy of their own."""
    doc = {"doc_id": "g", "text": "The tower was built in 1889 in Paris."}
    records = [
        _rec(True, False, "The [1]", [1], [doc], ["1889"]),
        _rec(True, False, "The processes [1]", [1], [doc], ["Paris"]),
        _rec(True, False, "Yes, it was. [1]", [1], [doc], ["yes"]),
        _rec(True, False, "Yes [1]", [1], [doc], ["no"]),
        _rec(True, True, ABSTAIN, [], [doc], ["yes"]),
        _rec(True, False, "London [1]", [1], [doc], ["Paris"]),
    ]
    m = E.aggregate(records, "retrieved")
    assert m["grounding"]["no_content_rate"] == round(2 / 5, 4) and m["grounding"]["unsupported_cited_rate"] == round(1 / 5, 4)
    assert m["yes_no"] == {"accuracy": round(1 / 3, 4), "questions": 3}
    assert records[2]["scores"]["f1"] == 1.0 and records[3]["scores"]["f1"] == 0.0


@pytest.mark.parametrize("task", ["summary", "extract"])
def test_summaries_and_json_answers_are_evaluated_against_references_from_the_gold_passage(small_index, tiny_llama: Path,
                                                                                          tmp_path: Path, task: str) -> None:
    from rag_pipeline import cli
    from rag_pipeline.eval import task_scores

    idx, _ = small_index
    qa = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    out = tmp_path / "out"
    assert cli.main(["evaluate", "--index", str(idx), "--qa", str(qa), "--output", str(out), "--no-adapter", "--task", task,
                     "--base-model", str(tiny_llama), "--oracle", "--k", "2", "--max-summary-tokens", "40", "--max-json-tokens", "48",
                     "--batch-size", "4", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["task"] == task
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * len(QA_ROWS) and all("reference" in p and "task" in p["scores"] for p in preds)
    for ctx in ("retrieved", "oracle"):
        recs = [p for p in preds if p["context"] == ctx]
        assert m["results"]["base"][ctx]["task"] == task_scores.aggregate(task, recs)  # the report's figures are the records'
    if task == "extract":  # decoded under the schema and closed before the token limit: every answer is valid
        assert all(p["scores"]["task"]["valid"] and p["json_error"] is None for p in preds)
    else:
        # the grammar: at least one cited sentence, unless the token limit cut the first one
        assert all(p["abstained"] or p["scores"]["task"]["sentences"] >= 1 or not p["raw"].rstrip().endswith(".") for p in preds)
    report = (out / "report.md").read_text()
    assert f"## Task: {task} (%)" in report and not re.search(r"\bnan\b", report)
