"""Hostile and careless input, tried through the command line as a user would type it (issue 11).

What was tried, and what must happen:

* Output paths that hold something else: ``build-index notes --index notes`` (the input folder
  itself), ``--index notes.txt`` (a user's file), ``--index proj/indexes/p`` inside the input
  ``proj``, a folder of unrelated files, the tool's own index with a user's file added;
  ``build-raft-dataset --output DIR`` where DIR holds the QA input or unrelated files, or the
  index; ``train-generator --output DIR`` holding ``thesis.tex``; ``evaluate --output`` a
  foreign folder; ``ask --questions ... --output`` an existing folder. Each exits 2 with one
  ``error:`` line naming the path and the fix, and every file there survives byte for byte.
* Empty splits: a ``--qa-dir`` with only ``train.jsonl`` builds (exit 0) with a warning, the
  empty validation and test splits load, and ``train-generator`` trains on it without evaluation.
* Values and files that used to end in a traceback: ``search -k 0``, ``-k -1``, ``--snippet -5``;
  an index manifest without ``files``; an adapter whose ``rag_pipeline.json`` is not JSON, or
  that has no weights; ``ask ""`` (which read standard input) and ``build-index ""`` (which
  indexed the working directory); ``eval-retrieval`` with a blank question or one id used for
  two questions (exact repeats are counted once, with a warning).
* Documents as data: JSON records whose ``text`` is null, a number, an object or a list are
  skipped with a reason instead of indexed as ``"None"``, ``"12345"`` or a repr; two records with
  one id are warned about; a folder given by a relative and by an absolute path gives the same
  document ids, so ``--update`` reuses every embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from conftest import CORPUS, write_jsonl
from rag_pipeline.cli import main


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its sha256: what must survive a refusal."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> str:
    """Run the CLI; assert exit 2 and exactly one ``error:`` line holding ``words``; return it."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A user's folder of notes, with a nested file."""
    d = tmp_path / "notes"
    (d / "2024").mkdir(parents=True)
    (d / "groceries.txt").write_text("Buy apples, flour and yeast for the bread.")
    (d / "ideas.md").write_text("# Ideas\n\nA lighthouse keeper who collects seashells.")
    (d / "2024" / "diary.txt").write_text("Walked along the cliffs and watched the ferries.")
    return d


HASH = ["--embedder", "hashing:64"]


# ---------------------------------------------------------------------------------------------
# 1. An output path that already holds something else is refused, never deleted
# ---------------------------------------------------------------------------------------------


def test_build_index_into_its_own_input_folder_is_refused(notes: Path, capsys: pytest.CaptureFixture) -> None:
    before = _tree(notes.parent)
    _refused(["build-index", str(notes), "--index", str(notes), *HASH], capsys, str(notes), "input")
    assert _tree(notes.parent) == before


def test_build_index_over_a_users_file_is_refused(notes: Path, capsys: pytest.CaptureFixture) -> None:
    mine = notes.parent / "notes.txt"
    mine.write_text("my only copy")
    before = _tree(notes.parent)
    _refused(["build-index", str(notes), "--index", str(mine), *HASH], capsys, str(mine), "file", "choose another path")
    assert _tree(notes.parent) == before  # no hidden .notes.txt.old-PID either


def test_build_index_inside_its_input_is_refused_up_front(notes: Path, capsys: pytest.CaptureFixture) -> None:
    before = _tree(notes)
    _refused(["build-index", str(notes), "--index", str(notes / "indexes" / "p"), *HASH], capsys, "inside the input")
    assert _tree(notes) == before and not (notes / "indexes").exists()


def test_build_index_over_a_foreign_folder_is_refused(notes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    _refused(["build-index", str(notes), "--index", str(other), *HASH], capsys, str(other), "not an index", "delete it yourself")
    assert _tree(other) == {"cat.jpg": hashlib.sha256(b"\xff\xd8\xff").hexdigest()}


def test_own_index_is_replaced_but_not_with_a_users_file_in_it(notes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    idx = tmp_path / "idx"
    assert main(["build-index", str(notes), "--index", str(idx), *HASH]) == 0
    assert main(["build-index", str(notes), "--index", str(idx), *HASH, "--force"]) == 0  # its own kind: replaced
    (idx / "README.md").write_text("what this index is for")
    _refused(["build-index", str(notes), "--index", str(idx), *HASH, "--force"], capsys, "README.md", "move those out")
    assert (idx / "README.md").read_text() == "what this index is for"


def test_build_index_into_an_empty_folder_works(notes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["build-index", str(notes), "--index", str(tmp_path / "empty"), *HASH]) == 0
    assert (tmp_path / "empty" / "manifest.json").is_file()


def test_raft_output_holding_its_qa_input_or_foreign_files_is_refused(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    idx, _ = small_index
    d = tmp_path / "work"
    qa = write_jsonl(d / "qa.jsonl", [{"question": "Where is the Eiffel Tower?", "answer": "Paris", "doc_id": "eiffel"}])
    (d / "plan.txt").write_text("unrelated")
    before = _tree(d)
    _refused(["build-raft-dataset", "--index", str(idx), "--qa", str(qa), "--output", str(d)], capsys, "inside --output")
    other = write_jsonl(tmp_path / "qa2.jsonl", [{"question": "Where is the Eiffel Tower?", "answer": "Paris"}])
    _refused(["build-raft-dataset", "--index", str(idx), "--qa", str(other), "--output", str(d)], capsys, str(d), "not a RAFT dataset")
    _refused(["build-raft-dataset", "--index", str(idx), "--qa", str(other), "--output", str(idx.parent)], capsys, "inside --output")
    assert _tree(d) == before and (idx / "manifest.json").is_file()


def test_train_generator_output_holding_a_thesis_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{Introduction}")
    _refused(["train-generator", "--dataset", str(tmp_path / "raft"), "--output", str(out)], capsys, str(out), "not a train-generator output")
    assert _tree(out) == {"thesis.tex": hashlib.sha256(b"\\chapter{Introduction}").hexdigest()}


def test_evaluate_output_over_a_foreign_folder_is_refused(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    idx, _ = small_index
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.9}')  # someone else's metrics.json
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Where is the Eiffel Tower?", "answer": "Paris"}])
    _refused(["evaluate", "--index", str(idx), "--qa", str(qa), "--output", str(out)], capsys, "not an evaluate output")
    assert (out / "metrics.json").read_text() == '{"accuracy": 0.9}'


def test_ask_output_that_is_a_folder_is_refused_before_models_load(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_pipeline import ask

    monkeypatch.setattr(ask.Pipeline, "load", lambda *a, **k: pytest.fail("models loaded before the output was checked"))
    qa = write_jsonl(tmp_path / "q.jsonl", [{"question": "Where is the Eiffel Tower?", "answer": "Paris"}])
    (tmp_path / "answers").mkdir()
    _refused(["ask", "--index", str(small_index[0]), "--questions", str(qa), "--output", str(tmp_path / "answers")], capsys,
             "is a directory", "pass a file path")
    _refused(["ask", "--index", str(small_index[0]), "--questions", str(qa), "--output", str(qa)], capsys, "also an input")


# ---------------------------------------------------------------------------------------------
# 3. Empty splits
# ---------------------------------------------------------------------------------------------

QA_ROWS = [
    {"id": "e1", "question": "In which city is the Eiffel Tower?", "answer": "Paris", "doc_id": "eiffel"},
    {"id": "e2", "question": "When was the Eiffel Tower completed?", "answer": "1889", "doc_id": "eiffel"},
    {"id": "m1", "question": "How often does the Moon orbit Earth?", "answer": "27 days", "doc_id": "moon"},
    {"id": "n1", "question": "Where does the Nile flow?", "answer": "Mediterranean Sea", "doc_id": "nile"},
    {"id": "p1", "question": "Who created Python?", "answer": "Guido van Rossum", "doc_id": "python"},
    {"id": "v1", "question": "Where is Mount Everest?", "answer": "Himalayas", "doc_id": "everest"},
]


def test_missing_splits_are_written_loadable_and_training_needs_no_validation(
        small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    from datasets import load_from_disk

    from rag_pipeline import train as T
    from rag_pipeline.errors import ConfigError
    from tiny_models import build_tiny_llama

    llama = build_tiny_llama(tmp_path / "llama")
    write_jsonl(tmp_path / "qa" / "train.jsonl", QA_ROWS)  # no dev.jsonl, no test.jsonl
    out = tmp_path / "raft"
    argv = ["build-raft-dataset", "--index", str(small_index[0]), "--qa-dir", str(tmp_path / "qa"), "--output", str(out),
            "--generator", str(llama), "--num-distractors", "1", "--max-prompt-tokens", "1024"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "warning: split 'validation' is empty" in printed and "warning: split 'test' is empty" in printed
    assert json.loads((out / "manifest.json").read_text())["empty_splits"] == ["validation", "test"]
    ds = load_from_disk(str(out / "dataset"))
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (6, 0, 0)

    fast = dict(base_model=str(llama), batch_size=2, grad_accum=1, max_steps=2, max_length=256, progress=False, device="cpu")
    with pytest.raises(ConfigError, match="early_stopping_patience is 2 but .* has no validation examples"):
        T.run(T.TrainConfig(dataset=str(out), output=str(tmp_path / "es"), early_stopping_patience=2, **fast))
    with caplog.at_level(logging.WARNING, logger="rag_pipeline.train"):
        summary = T.run(T.TrainConfig(dataset=str(out), output=str(tmp_path / "adapter"), **fast))
    assert summary["status"] == "finished" and summary["steps"] == 2 and summary["tuned"] is None and summary["base"] is None
    assert "training runs without evaluation" in caplog.text
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "checkpoints" / "last" / "state.json").is_file()  # --resume still has a checkpoint
    assert torch.load(tmp_path / "adapter" / "checkpoints" / "last" / "trainable.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------
# 4. Tracebacks where the README promises `error:` and exit 2
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,words", [(["-k", "0"], "k is 0"), (["-k", "-1"], "k is -1"), (["--snippet", "-5"], "snippet is -5")])
def test_search_rejects_non_positive_k_and_snippet(small_index: tuple, capsys: pytest.CaptureFixture, flags: list[str], words: str) -> None:
    _refused(["search", "Eiffel tower", "--index", str(small_index[0]), *flags], capsys, words, "at least 1")


def test_index_manifest_without_its_files_key_is_an_error(small_index: tuple, capsys: pytest.CaptureFixture) -> None:
    idx, _ = small_index
    manifest = json.loads((idx / "manifest.json").read_text())
    del manifest["files"]
    (idx / "manifest.json").write_text(json.dumps(manifest))
    _refused(["search", "Eiffel tower", "--index", str(idx)], capsys, "lacks 'files'", "--force")


@pytest.mark.parametrize("damage", ["not json", "no weights"])
def test_damaged_adapter_is_an_error(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    meta = {"kind": "rag-generator", "method": "lora", "base_model": "x", "template": "raft-v1"}
    (adapter / "rag_pipeline.json").write_text("{truncated" if damage == "not json" else json.dumps(meta))
    if damage == "not json":
        (adapter / "adapter_model.safetensors").write_bytes(b"")
    words = ("not valid JSON",) if damage == "not json" else ("no weights", "adapter_model.safetensors")
    _refused(["ask", "Where is the Eiffel Tower?", "--index", str(small_index[0]), "--adapter", str(adapter), "--device", "cpu"], capsys, *words)


def test_empty_positional_arguments_are_errors_not_absent(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_pipeline import ask

    class NoStdin:
        def readline(self) -> str:
            raise AssertionError("ask \"\" read standard input")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NoStdin())
    monkeypatch.setattr(ask.Pipeline, "load", lambda *a, **k: pytest.fail("models loaded for an empty question"))
    _refused(["ask", "", "--index", str(small_index[0])], capsys, "empty question argument", "standard input")
    _refused(["ask", "   ", "--index", str(small_index[0])], capsys, "empty question argument")
    monkeypatch.chdir(tmp_path)
    _refused(["build-index", "", "--index", str(tmp_path / "i"), *HASH], capsys, "empty paths argument")
    assert not (tmp_path / "i").exists()


def test_eval_retrieval_rejects_blank_questions_and_reused_ids(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    idx = str(small_index[0])
    good = {"id": "a", "question": "Where is the Eiffel Tower?", "answer": "Paris", "doc_id": "eiffel"}
    qa = write_jsonl(tmp_path / "blank.jsonl", [good, {"id": "b", "question": "  ", "answer": "x", "doc_id": "moon"}])
    _refused(["eval-retrieval", "--index", idx, "--qa", str(qa)], capsys, f"{qa}:2: blank question")
    qa = write_jsonl(tmp_path / "ids.jsonl", [good, {**good, "question": "Who created Python?", "doc_id": "python"}])
    _refused(["eval-retrieval", "--index", idx, "--qa", str(qa)], capsys, f"{qa}:2: id a is already used at {qa}:1")


def test_eval_retrieval_counts_exact_repeats_once_with_a_warning(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    good = {"id": "a", "question": "Where is the Eiffel Tower?", "answer": "Paris", "doc_id": "eiffel"}
    other = {"id": "b", "question": "Who created Python?", "answer": "Guido", "doc_id": "python"}
    qa = write_jsonl(tmp_path / "qa.jsonl", [good, other, good])
    with caplog.at_level(logging.WARNING):
        assert main(["eval-retrieval", "--index", str(small_index[0]), "--qa", str(qa), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["questions"] == 2
    assert "1 repeated question lines" in caplog.text


# ---------------------------------------------------------------------------------------------
# 5. Documents as data, not reprs
# ---------------------------------------------------------------------------------------------


def test_json_text_that_is_not_a_string_is_skipped_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"id": "ok", "text": "Lighthouses guide ships along rocky coasts."}, {"id": "null", "text": None},
            {"id": "num", "text": 12345}, {"id": "obj", "text": {"en": "hello"}}, {"id": "list", "text": ["a", "b"]},
            {"id": {"nested": 1}, "text": "A record whose id is an object."}]
    src = write_jsonl(tmp_path / "in" / "d.jsonl", rows)
    idx = tmp_path / "idx"
    assert main(["build-index", str(src), "--index", str(idx), *HASH]) == 0
    out = capsys.readouterr().out
    for line in (":2: bad text: 'text' is null", ":3: bad text: 'text' is a number", ":4: bad text: 'text' is an object",
                 ":5: bad text: 'text' is a list", ":6: bad id: 'id' is an object"):
        assert line in out, out
    from rag_pipeline.store import ChunkStore

    texts = [c.text for c in ChunkStore(idx / "chunks.sqlite").iter_chunks()]
    assert len(texts) == 1 and texts[0].startswith("Lighthouses guide ships")  # no "None", "12345" or dict repr chunks


def test_repeated_document_ids_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rag_pipeline.ingest import IngestReport, read_documents

    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "First text."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "Second text."}, {"id": "y", "text": "Third."}])
    report = IngestReport()
    with caplog.at_level(logging.WARNING, logger="rag_pipeline.ingest"):
        docs = list(read_documents([a, b], report))
    assert [d.id for d in docs] == ["x", "x", "y"] and report.repeated_ids == 1
    assert "document id 'x'" in caplog.text and "already used" in caplog.text and "merged" in report.summary()


def test_relative_and_absolute_input_paths_give_the_same_ids(notes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             hashing_embedder) -> None:
    from rag_pipeline.index import IndexConfig, build_index
    from rag_pipeline.store import ChunkStore

    monkeypatch.chdir(notes.parent)
    idx = tmp_path / "idx"
    build_index(IndexConfig(paths=["notes"], index=str(idx), embedder="hashing:64"), embedder=hashing_embedder)
    rel = [(c.id, c.doc_id, c.source) for c in ChunkStore(idx / "chunks.sqlite").iter_chunks()]
    m = build_index(IndexConfig(paths=[str(notes.resolve())], index=str(idx), embedder="hashing:64", update=True), embedder=hashing_embedder)
    assert m.get("up_to_date") or m["counts"] == {"embedded": 0, "reused": len(rel)}
    assert [(c.id, c.doc_id, c.source) for c in ChunkStore(idx / "chunks.sqlite").iter_chunks()] == rel
    assert {s for _, _, s in rel} == {"notes/2024/diary.txt", "notes/groceries.txt", "notes/ideas.md"}


def test_bundled_corpus_keeps_its_own_record_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from itertools import islice

    from rag_pipeline.ingest import IngestReport, read_documents

    path = CORPUS / "documents.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:50]]
    monkeypatch.chdir(CORPUS.parent.parent)
    for given in (path, Path("corpus/disfl_qa/documents.jsonl")):  # absolute and relative
        docs = list(islice(read_documents([given], IngestReport()), 50))
        assert [d.id for d in docs] == [r["id"] for r in records] and {d.source for d in docs} == {"documents.jsonl"}
