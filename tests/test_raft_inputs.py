"""build-raft-dataset on what users have: the tutorials' JSON with inline contexts and sentence
answers, contexts matched to an existing index, free-form oracles and distractors, small data,
and questions generated from documents alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_pipeline import prompt as P
from rag_pipeline.data.contexts import context_doc_id
from rag_pipeline.data.raft import RaftConfig, format_table, run
from rag_pipeline.support import supports
from rag_pipeline.textnorm import contains_answer

TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"  # packaged fast tokenizer, loads in < 1 s
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "marrowick_qa.json"


def _cfg(out: Path, **kw) -> RaftConfig:
    base = {"output": str(out), "generator": TOKENIZER, "embedder": "hashing:64", "max_prompt_tokens": 512, "format": ["eval"], "p_oracle": 1.0}
    return RaftConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for s in ("train", "validation", "test") for line in (out / "jsonl" / f"{s}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def example_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ex") / "raft"
    return run(_cfg(out, qa=[str(EXAMPLE)], num_distractors=2, p_oracle=1.0)), out


def test_inline_contexts_need_no_index(example_build: tuple[dict, Path]) -> None:
    result, out = example_build
    records = json.loads(EXAMPLE.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "exports", "index", "jsonl", "manifest.json"]
    index = json.loads((out / "index" / "manifest.json").read_text())
    assert index["kind"] == "rag-index" and index["corpus"]["documents"] == 8 and index["embedder"]["id"] == "hashing:64"
    assert result["index"] == {**result["index"], "path": "index", "built_from_contexts": True}
    assert result["answer_form"]["form"] == "free-form"
    rows = _rows(out)
    assert len(rows) == len(records) and result["counts"].get("skip_oracle_not_found", 0) == 0
    context_of = {r["question"]: r["context"] for r in records}
    for r in rows:
        gold = context_doc_id(context_of[r["question"]])
        assert r["doc_id"] == gold
        oracle = r["documents"][r["oracle_position"]]
        assert oracle["text"] in context_of[r["question"]]  # the record's own context is its oracle
        assert r["completion"] == f"{r['answer'][0]} [{r['oracle_position'] + 1}]"  # the answer as written, cited
        for i, d in enumerate(r["documents"]):
            if i != r["oracle_position"]:
                assert d["text"] not in context_of[r["question"]]  # distractors from the other contexts


def test_distractors_never_support_a_free_form_answer(tmp_path: Path) -> None:
    """Near-copies of the oracle's facts in other documents may not be distractors."""
    facts = [("Tarn Point lighthouse", "Agnes Corran", 1868), ("Kellsford harbour", "Ewan Baird", 1702),
             ("Greyback bridge", "Mora Lusk", 1911), ("Saltmere pier", "Iona Fell", 1890), ("Brightwater quay", "Hal Dunne", 1755)]
    records, docs = [], []
    for i, (thing, who, year) in enumerate(facts):
        ctx = f"The {thing} was designed by the engineer {who}. Work on it ended in {year}. Locals call it the old {thing.split()[-1]}."
        records.append({"context": ctx, "question": f"Who designed the {thing}?", "answer": f"The engineer {who} designed the {thing} in {year}."})
        # A second passage restating the same fact: it supports the answer, so it must never be a distractor.
        docs.append(f"In {year} the {thing}, a design of {who}, was finished.")
        docs.append(f"Visitors to the {thing} often stop for tea at a cafe run by family number {i}.")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "text": t}) + "\n" for i, t in enumerate(docs))
                                         + "".join(json.dumps({"id": f"c{i}", "text": r["context"]}) + "\n" for i, r in enumerate(records)))
    from rag_pipeline.index.build import IndexConfig, build_index

    build_index(IndexConfig(paths=[str(tmp_path / "docs.jsonl")], index=str(tmp_path / "idx"), embedder="hashing:64"))
    (tmp_path / "qa.json").write_text(json.dumps(records))
    result = run(_cfg(tmp_path / "o", index=str(tmp_path / "idx"), qa=[str(tmp_path / "qa.json")], num_distractors=4, hard_negative_ratio=1.0))
    assert result["answer_form"]["form"] == "free-form" and result["contexts"]["matched"] == 5
    rows = _rows(tmp_path / "o")
    assert len(rows) == 5
    restated = 0
    for r in rows:
        assert r["doc_id"].startswith("c")  # the matched context's document
        for i, d in enumerate(r["documents"]):
            if i != r["oracle_position"]:
                assert not supports(d["text"], r["answer"], 0.5), (r["answer"], d["text"])
        restated += any(supports(t, r["answer"], 0.5) for t in docs if t not in {d["text"] for d in r["documents"]})
    assert restated == 5  # each answer had a supporting passage elsewhere: the rule, not luck, kept it out


def test_contexts_missing_from_an_existing_index_are_reported(tmp_path: Path) -> None:
    from rag_pipeline.index.build import IndexConfig, build_index

    records = json.loads(EXAMPLE.read_text())
    lacking = [r for r in records if "puffin" not in r["context"]]
    (tmp_path / "partial.json").write_text(json.dumps(lacking))
    # build-index reads the same tutorial-format file (its "context" field) with no --text-field.
    build_index(IndexConfig(paths=[str(tmp_path / "partial.json")], index=str(tmp_path / "idx"), embedder="hashing:64"))
    result = run(_cfg(tmp_path / "o", index=str(tmp_path / "idx"), qa=[str(EXAMPLE)], num_distractors=2))
    assert result["counts"]["contexts_missing"] == 1
    assert result["contexts"]["missing"] == 1 and "puffin" in result["contexts"]["missing_first"][0]
    assert not (tmp_path / "o" / "index").exists()  # the given index is used, not copied
    assert "contexts_missing=1" in format_table(result)


def test_an_absent_index_path_receives_the_contexts_index(tmp_path: Path) -> None:
    result = run(_cfg(tmp_path / "o", index=str(tmp_path / "new-idx"), qa=[str(EXAMPLE)], num_distractors=2))
    assert json.loads((tmp_path / "new-idx" / "manifest.json").read_text())["kind"] == "rag-index"
    assert not (tmp_path / "o" / "index").exists() and result["index"]["path"] == str(tmp_path / "new-idx")
    assert result["index"]["built_from_contexts"] is True


def test_no_index_and_no_contexts_is_a_clear_error(tmp_path: Path) -> None:
    from rag_pipeline.errors import InputError

    (tmp_path / "qa.jsonl").write_text('{"question": "Who?", "answer": "Me"}\n')
    with pytest.raises(InputError, match="no index: pass --index DIR .* or a QA file whose records carry their passage"):
        run(_cfg(tmp_path / "o", qa=[str(tmp_path / "qa.jsonl")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl"]  # nothing half-written, no staging left


def test_cot_quotes_the_sentence_that_supports_a_free_form_answer(tmp_path: Path) -> None:
    run(_cfg(tmp_path / "o", qa=[str(EXAMPLE)], num_distractors=2, answer_style="cot", p_oracle=1.0))
    rows = _rows(tmp_path / "o")
    for r in rows:
        quote = r["completion"].split("##begin_quote##")[1].split("##end_quote##")[0]
        oracle = r["documents"][r["oracle_position"]]["text"]
        assert quote in oracle and quote != oracle  # a sentence (or two), not the whole passage
        assert r["completion"].endswith(f"<ANSWER>: {r['answer'][0]}")
    lighthouse = next(r for r in rows if r["question"] == "Who designed the Tarn Point lighthouse?")
    assert "##begin_quote##It was designed by the engineer Agnes Corran and first lit in 1868.##end_quote##" in lighthouse["completion"]


def test_small_data_goes_to_train_with_a_warning(tmp_path: Path) -> None:
    records = json.loads(EXAMPLE.read_text())
    # Find a seed that hashes every context away from train: the old rule wrote an empty train split.
    from rag_pipeline.data.raft import split_of

    contexts = sorted({r["context"] for r in records})[:2]
    seed = next(s for s in range(200) if all(split_of(context_doc_id(c), s, [0.8, 0.1, 0.1]) != "train" for c in contexts))
    small = [r for r in records if r["context"] in contexts]
    (tmp_path / "small.json").write_text(json.dumps(small))
    result = run(_cfg(tmp_path / "o", qa=[str(tmp_path / "small.json")], num_distractors=0, seed=seed))
    assert result["stats"]["train"]["examples"] == len(small) and result["empty_splits"] == ["validation", "test"]
    table = format_table(result)
    assert f"all {len(small)} examples went to train" in table and "about 10 documents" in table
    assert f"train holds only {len(small)} examples: too few to learn from" in table


def test_span_data_keeps_the_verbatim_rules(tmp_path: Path) -> None:
    """Span answers (detected) build the same bytes as with --answer-form span."""
    records = [{"context": r["context"], "question": r["question"], "answer": a}
               for r, a in zip(json.loads(EXAMPLE.read_text()), ["Saltmere Sea", "212 metres", "eleven kilometres long", "Kellsford",
                                                                  "About 1,900 people", "a herring harbour", "Agnes Corran", "1868",
                                                                  "thirty kilometres", "about two hours", "once a day", "several days",
                                                                  "the end of the herring season", "paper lanterns", "six thousand pairs",
                                                                  "in the autumn", "tourism", "local heather", "2011", "Dunhollow",
                                                                  "about ninety pupils"])]
    (tmp_path / "span.json").write_text(json.dumps(records))
    auto = run(_cfg(tmp_path / "a", qa=[str(tmp_path / "span.json")], num_distractors=2))
    span = run(_cfg(tmp_path / "s", qa=[str(tmp_path / "span.json")], num_distractors=2, answer_form="span"))
    assert auto["answer_form"] == {"form": "span", "verbatim_share": 1.0}
    for s in ("train", "validation", "test"):
        assert (tmp_path / "a" / "jsonl" / f"{s}.jsonl").read_bytes() == (tmp_path / "s" / "jsonl" / f"{s}.jsonl").read_bytes()
    free = run(_cfg(tmp_path / "f", qa=[str(tmp_path / "span.json")], num_distractors=2, answer_form="free-form"))
    assert free["answer_form"]["form"] == "free-form"
    assert all(contains_answer(r["documents"][r["oracle_position"]]["text"], r["answer"]) for r in _rows(tmp_path / "a"))


def test_one_document_corpus_takes_distractors_from_its_other_chunks(tmp_path: Path) -> None:
    from rag_pipeline.index.build import IndexConfig, build_index

    text = " ".join(f"Section {i} records that the village of Pell{i} grew barley in the year {1700 + i}." for i in range(40))
    (tmp_path / "book.jsonl").write_text(json.dumps({"id": "book", "text": text}) + "\n")
    build_index(IndexConfig(paths=[str(tmp_path / "book.jsonl")], index=str(tmp_path / "idx"), embedder="hashing:64", chunk_size=32, chunk_overlap=0))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": f"When did Pell{i} grow barley?", "answer": str(1700 + i), "doc_id": "book"}) + "\n"
                                               for i in range(0, 40, 7)))
    result = run(_cfg(tmp_path / "o", index=str(tmp_path / "idx"), qa=[str(tmp_path / "qa.jsonl")], num_distractors=2))
    rows = _rows(tmp_path / "o")
    assert len(rows) == 6 and result["counts"].get("skip_too_few_distractors", 0) == 0
    for r in rows:
        assert len(r["documents"]) == 3 and len({d["id"] for d in r["documents"]}) == 3
        assert sum(contains_answer(d["text"], r["answer"]) for d in r["documents"]) == 1  # only the oracle holds it


def test_generated_questions_build_a_dataset(small_index: tuple, tmp_path: Path) -> None:
    result = run(_cfg(tmp_path / "o", index=str(small_index[0]), embedder="", generate_questions=4, question_generator="fake",
                      question_top_k=3, num_distractors=1, hybrid=False))
    report = result["generated_questions"]
    assert report["kept"] == 4 == result["counts"]["questions"]
    kept = [json.loads(x) for x in (tmp_path / "o" / "questions" / "kept.jsonl").read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "o" / "questions" / "dropped.jsonl").read_text().splitlines()]
    assert len(kept) == 4 and all(k["dropped_by"] is None for k in kept)
    assert len(dropped) == sum(report["dropped"].values()) and all(d["dropped_by"] for d in dropped)
    rows = _rows(tmp_path / "o")
    assert sorted(r["question"] for r in rows) == sorted(k["question"] for k in kept)
    assert all(contains_answer(r["documents"][r["oracle_position"]]["text"], r["answer"]) for r in rows)
    assert "generated questions: " in format_table(result) and "4 kept" in format_table(result)
    assert P.ABSTAIN not in {r["completion"] for r in rows}


# ---------------------------------------------------------------------------------------------
# Records that carry their own context are never dropped for their answer's wording
# ---------------------------------------------------------------------------------------------

WEAVERS = ["Bram", "Corin", "Dalla", "Edric", "Fenna", "Garet", "Hilde", "Ivo"]


def _story(i: int) -> str:
    """~110 words: three chunks of the hashing embedder's 64-word windows (32 shared)."""
    n = WEAVERS[i]
    return (f"{n} was a weaver who lived in the village of Vell{i}. Every morning {n} walked to the mill{i} beside the Ros{i} river. "
            f"The neighbours said that {n} kept {i + 3} goats and a grey pony called Tam{i}. In the spring the village held a fair "
            f"where {n} sold woollen{i} blankets to traders from the coast. One winter a great storm broke the old bridge{i} near the mill{i}. "
            f"{n} spent many weeks repairing the bridge{i} with timber from the Kael{i} forest. When the work was finished the elders "
            f"gave {n} a silver{i} cup as thanks. Years later the children of Vell{i} still told the story of the storm and the bridge{i}.")


# The answers people write: none of them occurs in its story, and no chunk holds its words.
UNSPANNED = {
    0: ("Did Bram repair the bridge0 after the storm?", "Yes", "repairing the bridge0"),
    1: ("Did Corin sell the grey pony at the fair?", "no", "grey pony called Tam1"),
    2: ("Is Dalla still remembered by the children of Vell2?", "He is", "children of Vell2"),
    3: ("What became of the bridge3 after the storm?", "It was mended with wood from the Kael3 woods", "Kael3 forest"),
}


def _tutorial_records() -> list[dict]:
    """The tutorials' format: a JSON array of {context, question, answer}, no index, no doc_id."""
    out = []
    for i, n in enumerate(WEAVERS):
        qa = [(f"Where did {n} live?", f"Vell{i}"), (f"What did {n} sell at the fair?", f"woollen{i} blankets"),
              (f"What did the elders give {n}?", f"a silver{i} cup")]
        if i in UNSPANNED:
            qa[0] = UNSPANNED[i][:2]
        out += [{"context": _story(i), "question": q, "answer": a} for q, a in qa]
    return out


def test_records_with_their_own_context_are_all_kept_whatever_the_answer(tmp_path: Path) -> None:
    """20 of 24 answers are spans, so the file is span data; the other four ("Yes", "no", "He is",
    a paraphrase) are in no chunk verbatim. Each record names its context: it is kept, with the
    chunk of that context that best backs it (the question's words decide for yes/no)."""
    records = _tutorial_records()
    (tmp_path / "stories.json").write_text(json.dumps(records))
    result = run(_cfg(tmp_path / "o", qa=[str(tmp_path / "stories.json")], num_distractors=2))
    index = json.loads((tmp_path / "o" / "index" / "manifest.json").read_text())
    assert index["corpus"]["documents"] == 8 and index["corpus"]["chunks"] >= 3 * 8  # every story spans 3 chunks
    assert result["answer_form"] == {"form": "span", "verbatim_share": round(20 / 24, 4)}
    rows = _rows(tmp_path / "o")
    assert len(rows) == len(records) and not any(k.startswith("skip_") for k in result["counts"])
    assert "skipped" not in result and not (tmp_path / "o" / "skipped.jsonl").exists()
    by_question = {r["question"]: r for r in rows}
    for rec in records:
        row = by_question[rec["question"]]
        oracle = row["documents"][row["oracle_position"]]["text"]
        assert row["doc_id"] == context_doc_id(rec["context"]) and oracle in rec["context"] and oracle != rec["context"]
        assert row["completion"] == f"{rec['answer']} [{row['oracle_position'] + 1}]"
    for question, answer, where in UNSPANNED.values():
        row = by_question[question]
        assert not contains_answer(row["documents"][row["oracle_position"]]["text"], [answer])
        assert where in row["documents"][row["oracle_position"]]["text"], (question, row["documents"][row["oracle_position"]]["text"])


def test_the_example_file_keeps_every_record_when_its_contexts_span_several_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/marrowick_qa.json with 36-word chunks (each context spans 2-3), detected free-form
    and forced to span data: every record is kept, its oracle a chunk of its own context."""
    from rag_pipeline.index.embed import HashingEmbedder

    monkeypatch.setattr(HashingEmbedder.__init__, "__defaults__", (64, 36))  # chunk size: the embedder's max
    records = json.loads(EXAMPLE.read_text())
    for form in ("auto", "span"):
        result = run(_cfg(tmp_path / form, qa=[str(EXAMPLE)], num_distractors=2, answer_form=form))
        assert json.loads((tmp_path / form / "index" / "manifest.json").read_text())["corpus"]["chunks"] >= 2 * 8
        rows = _rows(tmp_path / form)
        assert len(rows) == len(records) and "skipped" not in result, (form, result["counts"])
        context_of = {r["question"]: r["context"] for r in records}
        for r in rows:
            oracle = r["documents"][r["oracle_position"]]["text"]
            assert oracle in context_of[r["question"]] and oracle != context_of[r["question"]]


def test_a_qa_file_without_answers_names_the_missing_column(tmp_path: Path) -> None:
    from rag_pipeline.errors import InputError

    (tmp_path / "qs.csv").write_text("id,question,context\n" + "".join(f"q{i},Where did {n} live?,\"{_story(i)}\"\n" for i, n in enumerate(WEAVERS[:3])))
    with pytest.raises(InputError, match=r"qs\.csv has no answer column \(looked for 'answer' or 'answers' or 'output' or 'response'; "
                                         r"columns seen: id, question, context\).* --answer-field"):
        run(_cfg(tmp_path / "o", qa=[str(tmp_path / "qs.csv")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qs.csv"]
