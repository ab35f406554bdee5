"""build-raft-dataset: oracle and distractor mixing, targets, budget, splits, exports, determinism, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rag_pipeline import prompt as P
from rag_pipeline.errors import ConfigError, IndexError_, InputError
from rag_pipeline.data.raft import RaftConfig, run
from rag_pipeline.textnorm import contains_answer

TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"  # packaged fast tokenizer, loads in < 1 s
N_DOCS = 40
VARIANTS = ("Who founded the town of Alpha{i}?", "Which person founded Alpha{i} town?", "Alpha{i} was founded by whom?",
            "Name the founder of Alpha{i}.", "Who is the founder of the Alpha{i} settlement?")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _doc(i: int) -> dict:
    text = (f"The town of Alpha{i} lies near the river Beta{i}. Its founder was Gamma{i} in the year {1000 + i}. "
            f"People there enjoy Delta{i} festivals and Epsilon{i} music.")
    if i % 5 == 0:  # a second chunk for some documents
        text += f" Traders of Alpha{i} sell Zeta{i} cloth and Eta{i} spices at the Theta{i} market every week of the year."
    return {"id": f"d{i:02d}", "title": f"Alpha{i}", "text": text}


def _questions(i: int) -> list[dict]:
    qs = [{"id": f"q{i:02d}-{v}", "question": t.format(i=i), "answer": [f"Gamma{i}"], "doc_id": f"d{i:02d}"} for v, t in enumerate(VARIANTS)]
    qs.append({"id": f"q{i:02d}-u", "question": f"What colour is the flag of Alpha{i}?", "answer": [], "doc_id": f"d{i:02d}", "answerable": False})
    return qs


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40 documents indexed with hashing:64, QA split by document into train/dev/test.jsonl."""
    from rag_pipeline.index.build import IndexConfig, build_index

    root = tmp_path_factory.mktemp("raft")
    docs = _jsonl(root / "docs.jsonl", [_doc(i) for i in range(N_DOCS)])
    build_index(IndexConfig(paths=[str(docs)], index=str(root / "idx"), embedder="hashing:64", chunk_overlap=8))
    for name, keep in (("train", range(0, 8)), ("dev", [8]), ("test", [9])):
        _jsonl(root / "qa" / f"{name}.jsonl", [q for i in range(N_DOCS) if i % 10 in keep for q in _questions(i)])
    return {"root": root, "index": str(root / "idx"), "qa_dir": str(root / "qa")}


def _cfg(corpus: dict, out: Path, **kw) -> RaftConfig:
    base = {"index": corpus["index"], "qa_dir": corpus["qa_dir"], "output": str(out), "generator": TOKENIZER, "max_prompt_tokens": 512}
    return RaftConfig(**{**base, **kw})


def _rows(out: Path, split: str | None = None) -> list[dict]:
    splits = [split] if split else ["train", "validation", "test"]
    return [json.loads(line) for s in splits for line in (out / "jsonl" / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def default_build(corpus: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out") / "raft"
    return run(_cfg(corpus, out, format=["chat", "completion", "raft", "eval"])), out


def test_output_holds_exactly_the_expected_files(default_build: tuple[dict, Path]) -> None:
    result, out = default_build
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    splits = ("test", "train", "validation")
    expected = {"manifest.json", "dataset/dataset_dict.json"} | {f"jsonl/{s}.jsonl" for s in splits}
    expected |= {f"dataset/{s}/{f}" for s in splits for f in ("data-00000-of-00001.arrow", "dataset_info.json", "state.json")}
    expected |= {f"exports/{fmt}/{s}.jsonl" for fmt in ("chat", "completion", "raft", "eval") for s in splits}
    assert set(files) == expected
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "raft-dataset" and m["template"] == P.DEFAULT_TEMPLATE and m["seed"] == 0
    assert m["template_text"] == P.template_text(P.get_template(P.DEFAULT_TEMPLATE))  # train-generator checks it
    assert m["index"]["embedder"] == "hashing:64" and m["generator_tokenizer"] == TOKENIZER
    assert set(m["params"]) == set(RaftConfig.__dataclass_fields__) - {"output", "json"}  # where and how it printed: not how it was built
    assert m["counts"]["examples_train"] == 8 * 4 * 6 and m["counts"]["examples_validation"] == 4 * 6


def test_corpus_split_is_kept_and_columns_match_the_contract(default_build: tuple[dict, Path]) -> None:
    from datasets import load_from_disk

    _, out = default_build
    dd = load_from_disk(str(out / "dataset"))
    assert set(dd) == {"train", "validation", "test"}
    for col in ("id", "question", "documents", "oracle_position", "prompt", "completion", "answer", "answerable"):
        assert col in dd["train"].column_names
    assert {r["doc_id"] for r in dd["validation"]} == {f"d{i:02d}" for i in range(8, N_DOCS, 10)}
    row = dd["train"][0]
    assert row["prompt"] == P.render_user(P.get_template(P.DEFAULT_TEMPLATE), row["question"], row["documents"])
    assert dd["train"].to_list() == _rows(out, "train")


def test_distractors_never_oracle_answer_or_repeat(default_build: tuple[dict, Path]) -> None:
    _, out = default_build
    for r in _rows(out):
        docs, pos = r["documents"], r["oracle_position"]
        assert len(docs) == 4
        assert len({d["id"] for d in docs}) == 4 and len({d["text"] for d in docs}) == 4
        gold_title = f"Alpha{int(r['doc_id'][1:])}"
        for i, d in enumerate(docs):
            if i != pos:
                assert not contains_answer(d["text"], r["answer"])
                assert d["title"] != gold_title  # no chunk of the gold document is a distractor
        if pos >= 0 and r["answerable"]:
            assert contains_answer(docs[pos]["text"], r["answer"])


def test_oracle_position_is_shuffled(default_build: tuple[dict, Path]) -> None:
    _, out = default_build
    positions = [r["oracle_position"] for r in _rows(out) if r["oracle_position"] >= 0]
    assert {0, 1, 2, 3} <= set(positions)
    assert max(positions.count(p) for p in range(4)) < 0.4 * len(positions)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_oracle_kept_at_rate_p(corpus: dict, tmp_path: Path, p: float) -> None:
    run(_cfg(corpus, tmp_path / "o", p_oracle=p, format=[]))
    rows = [r for r in _rows(tmp_path / "o") if r["answerable"]]
    rate = sum(r["oracle_position"] >= 0 for r in rows) / len(rows)
    assert abs(rate - p) < 0.08, (rate, p, len(rows))


def test_targets_cited_and_abstain_by_default(default_build: tuple[dict, Path]) -> None:
    _, out = default_build
    for r in _rows(out):
        if not r["answerable"] or r["oracle_position"] < 0:
            assert r["completion"] == P.ABSTAIN
        else:
            assert r["completion"] == f"{r['answer'][0]} [{r['oracle_position'] + 1}]"


def test_no_oracle_target_answer_keeps_the_answer(corpus: dict, tmp_path: Path) -> None:
    run(_cfg(corpus, tmp_path / "o", no_oracle_target="answer", p_oracle=0.5, format=[]))
    rows = _rows(tmp_path / "o")
    absent = [r for r in rows if r["answerable"] and r["oracle_position"] < 0]
    assert absent and all(r["completion"] == r["answer"][0] for r in absent)
    assert all(r["completion"] == P.ABSTAIN for r in rows if not r["answerable"])


def test_short_and_cot_styles(corpus: dict, tmp_path: Path) -> None:
    run(_cfg(corpus, tmp_path / "s", answer_style="short", format=[]))
    assert all(r["completion"] in (r["answer"][:1] + [P.ABSTAIN]) for r in _rows(tmp_path / "s"))
    run(_cfg(corpus, tmp_path / "c", answer_style="cot", format=[]))
    for r in _rows(tmp_path / "c"):
        if r["completion"] == P.ABSTAIN:
            continue
        quote = r["completion"].split("##begin_quote##")[1].split("##end_quote##")[0]
        oracle = r["documents"][r["oracle_position"]]["text"]
        assert quote in oracle and contains_answer(quote, r["answer"])
        assert r["completion"].endswith(f"<ANSWER>: {r['answer'][0]}")


def test_fake_teacher_writes_cot_and_generates_questions(corpus: dict, tmp_path: Path) -> None:
    run(_cfg(corpus, tmp_path / "t", answer_style="cot", teacher="fake", format=[]))
    done = [r for r in _rows(tmp_path / "t") if r["completion"] != P.ABSTAIN]
    assert done and all("##begin_quote##" in r["completion"] and r["completion"].endswith(f"<ANSWER>: {r['answer'][0]}") for r in done)
    result = run(_cfg(corpus, tmp_path / "g", qa_dir="", generate_questions=N_DOCS, question_generator="fake", format=[]))
    rows = _rows(tmp_path / "g")
    assert result["counts"]["questions"] == result["generated_questions"]["kept"] == N_DOCS  # N pairs in all, not per chunk
    assert len({r["doc_id"] for r in rows}) > N_DOCS // 2  # sampled across documents, not the first chunks
    assert all(contains_answer(r["documents"][r["oracle_position"]]["text"], r["answer"]) for r in rows if r["oracle_position"] >= 0)
    by_split = {s: {r["doc_id"] for r in _rows(tmp_path / "g", s)} for s in ("train", "validation", "test")}
    assert not (by_split["train"] & by_split["validation"]) and not (by_split["train"] & by_split["test"])


def test_generated_questions_join_the_qa_files_in_train_from_train_documents_only(corpus: dict, tmp_path: Path) -> None:
    """--generate-questions beside --qa-dir: written from the train split's documents only, added to
    train, so validation and test stay the files' own; yes/no and unanswerable forms get their chunk
    as oracle and the right targets."""
    alone = run(_cfg(corpus, tmp_path / "h", format=[]))
    mixed = run(_cfg(corpus, tmp_path / "m", generate_questions=6, question_generator="fake", question_yes_no=0.34,
                     question_unanswerable=0.34, question_top_k=N_DOCS, format=[]))
    train_docs = {r["doc_id"] for r in _rows(tmp_path / "h", "train")}
    human = {r["id"] for r in _rows(tmp_path / "h", "train")}
    generated = [r for r in _rows(tmp_path / "m", "train") if r["id"] not in human]
    forms = mixed["generated_questions"]["forms"]
    assert len(generated) == sum(forms.values()) >= 3 and forms["span"] >= 1
    assert {r["doc_id"] for r in generated} <= train_docs
    for s in ("validation", "test"):
        assert _rows(tmp_path / "m", s) == _rows(tmp_path / "h", s)
    assert mixed["counts"]["examples_train"] == alone["counts"]["examples_train"] + len(generated)
    for r in generated:
        if r["answer"] in (["Yes"], ["No"]):
            assert r["question"].endswith("?") and r["oracle_position"] >= 0 and r["completion"].startswith(r["answer"][0])
        elif not r["answerable"]:
            assert r["completion"] == P.ABSTAIN


def test_ratio_split_never_shares_a_document(corpus: dict, tmp_path: Path) -> None:
    qa = sorted(Path(corpus["qa_dir"]).glob("*.jsonl"))
    pooled = _jsonl(tmp_path / "all.jsonl", [json.loads(line) for p in qa for line in p.read_text().splitlines()])
    run(_cfg(corpus, tmp_path / "o", qa_dir="", qa=[str(pooled)], split_ratio=[0.6, 0.2, 0.2], format=[]))
    by_split = {s: {r["doc_id"] for r in _rows(tmp_path / "o", s)} for s in ("train", "validation", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["validation"]) and not (by_split["train"] & by_split["test"]) and not (by_split["validation"] & by_split["test"])


def test_budget_never_cuts_the_answer_sentence(corpus: dict, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from rag_pipeline.model_paths import resolve_model

    result = run(_cfg(corpus, tmp_path / "o", max_prompt_tokens=200, answer_style="cot", format=[]))
    assert result["counts"]["truncated_examples"] > 0
    tok = AutoTokenizer.from_pretrained(str(resolve_model(TOKENIZER)))
    template = P.get_template(P.DEFAULT_TEMPLATE)
    for r in _rows(tmp_path / "o"):
        assert P.example_tokens(tok, template, r["question"], r["documents"], r["completion"]) <= 200
        if r["answerable"] and r["oracle_position"] >= 0:
            quote = r["completion"].split("##begin_quote##")[1].split("##end_quote##")[0]
            assert quote in r["documents"][r["oracle_position"]]["text"]


def test_byte_identical_for_same_inputs_and_seed(corpus: dict, tmp_path: Path) -> None:
    def files(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a = run(_cfg(corpus, tmp_path / "a", format=["chat", "raft"]))
    b = run(_cfg(corpus, tmp_path / "b", format=["chat", "raft"]))
    assert files(tmp_path / "a") == files(tmp_path / "b")
    b7 = run(_cfg(corpus, tmp_path / "b7", format=["chat", "raft"], batch_size=7))  # batches do not change the data
    assert b7["fingerprint"] == a["fingerprint"]
    assert {k: v for k, v in files(tmp_path / "b7").items() if k != "manifest.json"} == {k: v for k, v in files(tmp_path / "a").items() if k != "manifest.json"}
    run(_cfg(corpus, tmp_path / "c", format=["chat", "raft"], seed=1))
    assert files(tmp_path / "c")["jsonl/train.jsonl"] != files(tmp_path / "a")["jsonl/train.jsonl"]


def test_exports_load_back_with_datasets(default_build: tuple[dict, Path], tmp_path: Path) -> None:
    from datasets import load_dataset

    _, out = default_build
    raft_cols = {"id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"}
    expected = {"chat": {"id", "messages"}, "completion": {"id", "prompt", "completion"}, "raft": raft_cols,
                "eval": {"id", "question", "answer", "doc_id", "answerable"}}
    n_train = len(_rows(out, "train"))
    for fmt, cols in expected.items():
        ds = load_dataset("json", data_files={s: str(out / "exports" / fmt / f"{s}.jsonl") for s in ("train", "test")}, cache_dir=str(tmp_path / fmt))
        assert set(ds["train"].column_names) == cols and len(ds["train"]) == n_train
    raft = load_dataset("json", data_files=str(out / "exports" / "raft" / "train.jsonl"), cache_dir=str(tmp_path / "r"))["train"][0]
    assert len(raft["context"]["sentences"][0]) == 4 and raft["instruction"].count("<DOCUMENT>") == 4
    assert raft["cot_answer"].startswith("<ANSWER>:") or "##begin_quote##" in raft["cot_answer"]
    chat = json.loads((out / "exports" / "chat" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]


def test_bad_questions_are_counted_skips(corpus: dict, tmp_path: Path) -> None:
    good = _questions(0)[:2]
    bad = [{"id": "e", "question": "   ", "answer": ["x"]},
           {"id": "n", "question": "Who founded Alpha1?", "answer": []},
           {"id": "m", "question": "Who founded Alpha2?", "answer": ["Nowhereword"], "doc_id": "d02"},
           {"id": "x", "question": "Who founded Alpha3?", "answer": ["Gamma3"], "doc_id": "no-such-doc"},
           good[0]]
    qa = _jsonl(tmp_path / "qa.jsonl", good + bad)
    result = run(_cfg(corpus, tmp_path / "o", qa_dir="", qa=[str(qa)], format=[]))
    c = result["counts"]
    assert (c["skip_empty_question"], c["skip_no_answer"], c["skip_duplicate"], c["skip_oracle_not_found"]) == (1, 1, 1, 2)
    assert (c["skip_oracle_not_indexed"], c["skip_oracle_unsupported"]) == (1, 1)  # no-such-doc; Nowhereword is in no chunk of d02
    assert sum(result["stats"][s]["examples"] for s in ("train", "validation", "test")) == 2


def test_duplicate_id_with_other_content_is_an_error(corpus: dict, tmp_path: Path) -> None:
    qa = _jsonl(tmp_path / "qa.jsonl", [{"id": "a", "question": "Who founded Alpha1?", "answer": ["Gamma1"]},
                                         {"id": "a", "question": "Who founded Alpha2?", "answer": ["Gamma2"]}])
    with pytest.raises(InputError, match="question id a is used for two different questions"):
        run(_cfg(corpus, tmp_path / "o", qa_dir="", qa=[str(qa)]))
    assert not (tmp_path / "o").exists()


def test_too_few_chunks_and_wrong_embedder_fail_loudly(corpus: dict, tmp_path: Path) -> None:
    from rag_pipeline.index.build import IndexConfig, build_index

    docs = _jsonl(tmp_path / "d.jsonl", [_doc(i) for i in (1, 2, 3)])
    build_index(IndexConfig(paths=[str(docs)], index=str(tmp_path / "idx"), embedder="hashing:64", chunk_overlap=8))
    with pytest.raises(InputError, match=r"holds 3 chunks, too few .* lower --num-distractors to 1"):
        run(_cfg(corpus, tmp_path / "o", index=str(tmp_path / "idx")))
    with pytest.raises(IndexError_, match="built with embedder hashing:64, not sentence-transformers"):
        run(_cfg(corpus, tmp_path / "o", embedder="sentence-transformers/all-MiniLM-L6-v2"))
    with pytest.raises(InputError, match="no questions"):
        run(_cfg(corpus, tmp_path / "o", qa_dir=""))
    assert not (tmp_path / "o").exists()


def test_failure_mid_write_keeps_the_old_output(corpus: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rag_pipeline.data.raft as raft

    out = tmp_path / "o"
    run(_cfg(corpus, out, format=[]))
    before = (out / "manifest.json").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(raft, "fingerprint", boom)
    with pytest.raises(OSError):
        run(_cfg(corpus, out, format=[], seed=3))
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


@pytest.mark.parametrize("kw,match", [({"p_oracle": 1.5}, "p_oracle must be between 0 and 1"),
                                      ({"format": ["csv"]}, "unknown --format csv: choose from chat"),
                                      ({"teacher": "fake"}, "add --answer-style cot"),
                                      ({"question_yes_no": 0.7, "question_unanswerable": 0.5}, "exceeds 1"),
                                      ({"question_unanswerable": -0.1}, "question_unanswerable must be a share"),
                                      ({"min_support": 1.5}, "min_support must be between 0 and 1"),
                                      ({"template": "nope"}, "known templates are raft-v1"),
                                      ({"task": "qa=0.5,poem=0.5"}, "unknown task 'poem'"),
                                      ({"task": "qa=0,summary=0"}, "no task has a positive weight")])
def test_config_errors_name_the_fix(kw: dict, match: str) -> None:
    from rag_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        RaftConfig(**kw)


def test_cli_builds_and_reports_errors_on_one_line(corpus: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rag_pipeline.cli import main

    args = ["build-raft-dataset", "--index", corpus["index"], "--qa-dir", corpus["qa_dir"], "--output", str(tmp_path / "o"),
            "--generator", TOKENIZER, "--format", "chat,eval", "--no-oracle-target", "answer"]
    assert main(args) == 0
    assert "oracle" in capsys.readouterr().out and (tmp_path / "o" / "exports" / "eval" / "test.jsonl").is_file()
    assert main(args + ["--num-distractors", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: index") and "\n" not in err


def test_skipped_questions_are_listed_with_their_reason(corpus: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """skipped.jsonl holds every question left out (id, question, answer, reason, best support);
    the summary line names it and --json gives the ids. It is not part of the dataset's fingerprint."""
    from rag_pipeline.cli import main
    from rag_pipeline.data.raft import SKIP_REASONS, format_table

    good = _questions(0)[:2]
    bad = [{"id": "n", "question": "Who founded Alpha1?", "answer": []},
           {"id": "m", "question": "Who founded Alpha2?", "answer": ["Nowhereword"], "doc_id": "d02"},
           {"id": "x", "question": "Who founded Alpha3?", "answer": ["Gamma3"], "doc_id": "no-such-doc"}]
    qa = _jsonl(tmp_path / "qa.jsonl", good + bad + [good[0]])
    out = tmp_path / "o"

    def build(qa: Path, out: Path) -> dict:
        assert main(["build-raft-dataset", "--index", corpus["index"], "--qa", str(qa), "--output", str(out), "--generator", TOKENIZER,
                     "--format", "eval", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    result = build(qa, out)
    assert result["skipped"] == {"file": "skipped.jsonl", "questions": 4, "path": str(out / "skipped.jsonl"), "ids": ["n", good[0]["id"], "m", "x"]}
    listed = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"]) for s in listed] == [("n", SKIP_REASONS["skip_no_answer"]), (good[0]["id"], SKIP_REASONS["skip_duplicate"]),
                                                        ("m", SKIP_REASONS["skip_oracle_unsupported"]), ("x", SKIP_REASONS["skip_oracle_not_indexed"])]
    assert all({"id", "question", "answer", "reason", "support"} <= set(s) for s in listed)
    m = next(s for s in listed if s["id"] == "m")
    assert m["question"] == "Who founded Alpha2?" and m["answer"] == ["Nowhereword"] and m["support"] == 0.0
    assert json.loads((out / "manifest.json").read_text())["skipped"] == {"file": "skipped.jsonl", "questions": 4}
    assert f"skipped 4 of 6 questions (listed in {out / 'skipped.jsonl'})" in format_table(result)
    # The list describes the build: without the skipped questions, the same dataset and fingerprint.
    clean = build(_jsonl(tmp_path / "clean.jsonl", good), tmp_path / "clean")
    assert clean["fingerprint"] == result["fingerprint"] and "skipped" not in clean and not (tmp_path / "clean" / "skipped.jsonl").exists()


def test_a_second_build_to_the_same_output_is_refused_while_the_first_holds_it(corpus: dict, tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    from rag_pipeline.atomic import lock_path, output_lock
    from rag_pipeline.cli import main

    out = tmp_path / "o"
    run(_cfg(corpus, out, format=["eval"]))
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    args = ["build-raft-dataset", "--index", corpus["index"], "--qa-dir", corpus["qa_dir"], "--output", str(out),
            "--generator", TOKENIZER, "--format", "eval", "--seed", "5"]
    with output_lock(out):  # the first run, still building
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --output {out} is being written by another run (pid ") and str(lock_path(out)) in err and "\n" not in err
        after = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        assert after == before  # nothing of the first run's output was touched
        assert sorted(p.name for p in tmp_path.iterdir()) == [".o.lock", "o"]  # no temporary directory left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # released: the lock file goes with it
    assert main(args) == 0 and json.loads((out / "manifest.json").read_text())["seed"] == 5


def test_a_task_mixture_writes_summaries_and_json_targets_from_the_oracle(corpus: dict, tmp_path: Path) -> None:
    """Each example's task is drawn from the mixture; summaries cite the oracle only (the abstention without it),
    JSON targets copy the answer and its sentence from the oracle (nulls without it), and the prompt shows the
    request as ask --task summary|extract shows it."""
    from rag_pipeline.answer import structured, summary
    from rag_pipeline.data import tasks
    from rag_pipeline.prompt import ABSTAIN

    out = tmp_path / "mix"
    manifest = run(_cfg(corpus, out, task="qa=0.4,summary=0.3,extract=0.3", format=["eval"]))
    rows = _rows(out)
    assert manifest["tasks"] == {"qa": 0.4, "summary": 0.3, "extract": 0.3} and "task" in manifest["columns"]
    assert manifest["extract_schema"] == tasks.EXTRACT_SCHEMA  # the rule-written targets' schema: ask --task extract's default
    by_task = {t: [r for r in rows if r["task"] == t] for t in tasks.TASKS}
    assert all(len(v) > 10 for v in by_task.values()), {t: len(v) for t, v in by_task.items()}
    assert all(manifest["counts"][f"task_{t}"] == len(by_task[t]) for t in tasks.TASKS)
    for r in by_task["summary"]:
        assert summary.instruction(r["question"]) in r["prompt"]
        if r["oracle_position"] < 0 or not r["answerable"]:
            assert r["completion"] == ABSTAIN
            continue
        said = summary.sentences_of(r["completion"])
        oracle = r["documents"][r["oracle_position"]]["text"]
        assert 1 <= len(said) <= summary.MAX_SENTENCES and all(cited == [r["oracle_position"] + 1] for _, cited in said)
        assert any(r["answer"][0] in text for text, _ in said) and all(text in oracle for text, _ in said)
    for r in by_task["extract"]:
        assert structured.instruction(r["question"], tasks.EXTRACT_SCHEMA) in r["prompt"]
        obj, error = structured.parse(r["completion"], tasks.EXTRACT_SCHEMA)
        assert error is None and r["completion"] == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if r["oracle_position"] < 0 or not r["answerable"]:
            assert obj == {"answer": None, "quote": None}
        else:
            oracle = r["documents"][r["oracle_position"]]["text"]
            assert obj["answer"].lower() == r["answer"][0].lower() and obj["answer"] in obj["quote"] and obj["quote"] in oracle
    for r in by_task["qa"]:
        assert r["prompt"].count(r["question"]) == 1 and "Summarize" not in r["prompt"]
    evals = [json.loads(line) for line in (out / "exports" / "eval" / "test.jsonl").read_text().splitlines()]
    assert evals and all("task" in e for e in evals)
    again = tmp_path / "again"  # the same mixture and seed: the same tasks
    run(_cfg(corpus, again, task="qa=0.4,summary=0.3,extract=0.3", format=["eval"]))
    assert [(r["id"], r["task"]) for r in _rows(again)] == [(r["id"], r["task"]) for r in rows]


def test_a_records_own_summary_is_its_summary_target(corpus: dict, tmp_path: Path) -> None:
    """QA records with a 'summary' (query/summary data): the summary task writes it, each sentence cited with the
    oracle; one the summary grammar cannot hold falls back to the summary written from the oracle, counted."""
    from rag_pipeline.answer import summary

    qa = tmp_path / "qa"
    for split in ("train", "dev", "test"):
        records = [json.loads(x) for x in (Path(corpus["qa_dir"]) / f"{split}.jsonl").read_text().splitlines()]
        for i, r in enumerate(records):
            r["summary"] = f"The record says what it says. It is about topic {i}." if i % 4 else "Cut at St. Louis in May. Then more."
        _jsonl(qa / f"{split}.jsonl", records)
    out = tmp_path / "given"
    manifest = run(_cfg(corpus, out, qa_dir=str(qa), task="summary"))
    rows = [r for r in _rows(out) if r["oracle_position"] >= 0 and r["answerable"]]
    given = [r for r in rows if r["completion"].startswith("The record says")]
    assert given and manifest["counts"]["summary_given"] == len(given) and manifest["counts"]["summary_given_unwritable"] > 0
    for r in given:
        said = summary.sentences_of(r["completion"])
        assert [c for _, c in said] == [[r["oracle_position"] + 1]] * 2 and said[1][0].startswith("It is about topic")
    assert all(not r["completion"].startswith("Cut at") for r in rows)


def test_a_records_own_json_answer_is_its_extract_target_under_an_inferred_or_given_schema(corpus: dict, tmp_path: Path) -> None:
    """QA records with an 'extract' object: the extract task writes it under the schema inferred from the records
    (kept in the manifest), all nulls without the oracle; --schema gives the schema instead, and an object it
    refuses falls back to qa, counted; records without one keep the rule-written answer/quote target."""
    from rag_pipeline.answer import structured
    from rag_pipeline.data import tasks

    qa = tmp_path / "qa"
    for split in ("train", "dev", "test"):
        records = [json.loads(x) for x in (Path(corpus["qa_dir"]) / f"{split}.jsonl").read_text().splitlines()]
        for i, r in enumerate(records):
            if i % 3:
                r["extract"] = {"topic": f"topic {i}", "count": i}
        _jsonl(qa / f"{split}.jsonl", records)
    out = tmp_path / "inferred"
    manifest = run(_cfg(corpus, out, qa_dir=str(qa), task="extract"))
    schema = manifest["extract_schema"]
    assert schema["properties"] == {"topic": {"type": ["string", "null"]}, "count": {"type": ["integer", "null"]}}
    rows = _rows(out)
    own = [r for r in rows if r["prompt"].count('"topic"')]
    assert own and manifest["counts"]["extract_given"] == len(own)
    for r in own:
        assert structured.instruction(r["question"], schema) in r["prompt"]
        obj, error = structured.parse(r["completion"], schema)
        assert error is None
        if r["oracle_position"] < 0 or not r["answerable"]:
            assert obj == {"topic": None, "count": None}
        else:
            assert obj["topic"].startswith("topic ") and list(obj) == ["topic", "count"]
    rule = [r for r in rows if r not in own and r["task"] == "extract"]
    assert rule and all(structured.instruction(r["question"], tasks.EXTRACT_SCHEMA) in r["prompt"] for r in rule)
    assert any(w.startswith(f"{manifest['counts']['extract_written']} extract examples of records without their own") and
               "not the stored extract_schema" in w for w in manifest["warnings"])  # two schemas trained: said
    strict = tmp_path / "schema.json"
    strict.write_text(json.dumps({"type": "object", "properties": {"topic": {"type": ["string", "null"]},
                                  "count": {"type": ["string", "null"]}}, "required": ["topic", "count"]}))
    manifest = run(_cfg(corpus, tmp_path / "given", qa_dir=str(qa), task="extract", schema=str(strict)))
    assert manifest["extract_schema"]["properties"]["count"] == {"type": ["string", "null"]}
    assert manifest["counts"]["extract_given_invalid"] > 0 and manifest["counts"]["extract_written_as_qa"] >= manifest["counts"]["extract_given_invalid"]
    assert any("do not validate against the schema of --schema" in w for w in manifest["warnings"])
    nothing = tmp_path / "nothing.json"  # every object is refused: the schema no example used is not stored, the rule-written one is
    nothing.write_text(json.dumps({"type": "object", "properties": {"topic": {"type": "integer"}}, "required": ["topic"]}))
    manifest = run(_cfg(corpus, tmp_path / "unused", qa_dir=str(qa), task="extract", schema=str(nothing)))
    assert manifest["extract_schema"] == tasks.EXTRACT_SCHEMA and any("stored is the rule-written" in w for w in manifest["warnings"])
    with pytest.raises(InputError, match="names no properties"):
        run(_cfg(corpus, tmp_path / "any", qa_dir=str(qa), task="extract", schema="object"))
    with pytest.raises(InputError, match="does not exist"):
        run(_cfg(corpus, tmp_path / "missing", qa_dir=str(qa), task="extract", schema=str(tmp_path / "nope.json")))
    with pytest.raises(ConfigError, match="has no extract"):
        RaftConfig(schema=str(strict), task="qa")


def test_qa_alone_writes_no_task_column(default_build: tuple[dict, Path]) -> None:
    manifest, out = default_build
    assert "tasks" not in manifest and "task" not in manifest["columns"] and "task" not in _rows(out)[0]


def test_share_context_shows_one_oracles_questions_the_same_passages_under_the_same_rules(corpus: dict, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    result = run(_cfg(corpus, out, share_context=3, p_oracle=1.0))
    rows = _rows(out, "train")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["documents"]), []).append(r)
    sizes = sorted(len(g) for g in groups.values())
    # 6 questions on each of 32 training documents: two contexts of 3 each, or more where an answer stood elsewhere
    assert max(sizes) == 3 and len(groups) < len(rows) / 2
    assert result["counts"]["shared_context"] == len(rows) - len(groups)  # the train split's only
    for r in rows:  # the builder's rules still hold for every question given another's passages
        docs, pos = r["documents"], r["oracle_position"]
        assert all(not contains_answer(d["text"], r["answer"]) for i, d in enumerate(docs) if i != pos)
        if r["answerable"]:
            assert contains_answer(docs[pos]["text"], r["answer"]) and r["completion"] == f"{r['answer'][0]} [{pos + 1}]"
    for g in groups.values():
        assert len({r["doc_id"] for r in g}) == 1  # one oracle's questions
    alone = run(_cfg(corpus, tmp_path / "alone", p_oracle=1.0))
    assert "shared_context" not in alone["counts"] and len(_rows(tmp_path / "alone", "train")) == len(rows)
    for split in ("validation", "test"):  # read apart, so left as an unshared build writes them
        assert _rows(out, split) == _rows(tmp_path / "alone", split)


def test_share_contexts_gives_a_later_question_the_first_ones_passages_only_where_none_holds_its_answer() -> None:
    from rag_pipeline.data.raft import Example, Tally, share_contexts
    from rag_pipeline.qa import QAItem

    oracle = {"id": "o", "title": "T", "text": "Gamma founded Alpha in 1001."}
    other = {"id": "x", "title": "U", "text": "Delta sells cloth at the Theta market."}

    def ex(i: int, answers: list[str], oracle_id: str | None = "o", task: str = "qa", split: str = "train") -> Example:
        own = [{"id": f"own{i}", "title": "V", "text": f"Filler number {i}."}, oracle]
        return Example(split, QAItem(f"q{i}", f"question {i}?", answers), own, oracle_id, lambda p: "", "d1", task=task)

    examples = [ex(0, ["Gamma"]), ex(1, ["1001"]), ex(2, ["Theta market"]), ex(3, []), ex(4, ["Gamma"], task="summary"),
                ex(5, ["Gamma"], oracle_id=None), ex(6, ["Gamma"], split="validation"), ex(7, ["Alpha"])]
    examples[0] = dataclasses.replace(examples[0], documents=[other, oracle])  # the leader's distractor holds "Theta market"
    counts = Tally()
    out = share_contexts(examples, 3, False, 0.5, counts, lambda e: e.split == "train")
    docs = [e.documents for e in out]
    # q1 joins q0; q2's answer stands in q0's distractor, so it keeps its own and leads a new group, which q3 (no answer
    # to hold) and q7 join; the summary, the question without its oracle and the validation one keep their own
    assert docs[:2] == [examples[0].documents] * 2 and docs[2] == docs[3] == docs[7] == examples[2].documents
    assert docs[4:7] == [e.documents for e in examples[4:7]] and counts["shared_context"] == 3
    capped = share_contexts([ex(i, ["Gamma"]) for i in range(5)], 2, False, 0.5, Tally(), lambda e: True)
    assert [e.documents[0]["id"] for e in capped] == ["own0", "own0", "own2", "own2", "own4"]  # at most 2 a group
    free = share_contexts([ex(0, ["x"]), ex(1, ["Delta sells the cloth"])], 8, True, 0.5, Tally(), lambda e: True)
    assert free[1].documents == free[0].documents  # the leader's filler holds none of its words
    lead = dataclasses.replace(ex(0, ["x"]), documents=[other, oracle])
    free = share_contexts([lead, ex(1, ["Delta sells the cloth"])], 8, True, 0.5, Tally(), lambda e: True)
    assert free[1].documents != lead.documents  # free-form: the distractor holds most of its content words
