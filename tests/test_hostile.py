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
    from rag_pipeline.answer import ask as ask

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
    import torch
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
    from rag_pipeline.answer import ask as ask

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
    from rag_pipeline.index.store import ChunkStore

    texts = [c.text for c in ChunkStore(idx / "chunks.sqlite").iter_chunks()]
    assert len(texts) == 1 and texts[0].startswith("Lighthouses guide ships")  # no "None", "12345" or dict repr chunks


def test_repeated_document_ids_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rag_pipeline.index.ingest import IngestReport, read_documents

    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "First text."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "Second text."}, {"id": "y", "text": "Third."}])
    report = IngestReport()
    with caplog.at_level(logging.WARNING, logger="rag_pipeline.index.ingest"):
        docs = list(read_documents([a, b], report))
    assert [d.id for d in docs] == ["x", "x", "y"] and report.repeated_ids == 1
    assert "document id 'x'" in caplog.text and "already used" in caplog.text and "merged" in report.summary()


def test_relative_and_absolute_input_paths_give_the_same_ids(notes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             hashing_embedder) -> None:
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.store import ChunkStore

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

    from rag_pipeline.index.ingest import IngestReport, read_documents

    path = CORPUS / "documents.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:50]]
    monkeypatch.chdir(CORPUS.parent.parent)
    for given in (path, Path("corpus/disfl_qa/documents.jsonl")):  # absolute and relative
        docs = list(islice(read_documents([given], IngestReport()), 50))
        assert [d.id for d in docs] == [r["id"] for r in records] and {d.source for d in docs} == {"documents.jsonl"}


# ---------------------------------------------------------------------------------------------
# 6. One error line, not a traceback; messages that point the right way (brief C)
# ---------------------------------------------------------------------------------------------


def _no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any command gets as far as loading a generator."""
    from rag_pipeline import generator
    from rag_pipeline.answer import ask as ask
    from rag_pipeline.data import teacher

    monkeypatch.setattr(ask.Pipeline, "load", lambda *a, **k: pytest.fail("the models were loaded before the input was checked"))
    for module in (generator, teacher):  # the teacher imports load_generator by name
        monkeypatch.setattr(module, "load_generator", lambda *a, **k: pytest.fail("the models were loaded before the input was checked"))


@pytest.mark.parametrize("command", ["eval-retrieval", "build-raft-dataset", "evaluate", "ask"])
def test_a_csv_in_another_encoding_is_refused_with_the_fix(command: str, small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A spreadsheet's Windows-1252 CSV ("Zürich" as 0xfc) was a UnicodeDecodeError traceback in all four commands."""
    _no_models(monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    qa = work / "questions.csv"
    qa.write_bytes("question,answer,doc_id\nWhere is the Eiffel Tower?,Paris,eiffel\nWhich city is Zürich?,Zürich,eiffel\n".encode("cp1252"))
    idx = str(small_index[0])
    argv = {"eval-retrieval": ["eval-retrieval", "--index", idx, "--qa", str(qa)],
            "build-raft-dataset": ["build-raft-dataset", "--index", idx, "--qa", str(qa), "--output", str(work / "raft")],
            "evaluate": ["evaluate", "--index", idx, "--qa", str(qa), "--output", str(work / "eval")],
            "ask": ["ask", "--index", idx, "--questions", str(qa), "--device", "cpu"]}[command]
    _refused(argv, capsys, f"QA file {qa} is not UTF-8", "line 3", "re-encode it as UTF-8", "iconv")
    assert sorted(p.name for p in work.iterdir()) == ["questions.csv"]  # nothing written


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and a LoRA adapter of it, in the format train-generator writes."""
    from tiny_models import build_tiny_llama, make_adapter

    root = tmp_path_factory.mktemp("adapter")
    return make_adapter(build_tiny_llama(root / "llama"), root / "adapter")


DAMAGES = {
    "truncated weights": ("adapter_model.safetensors", lambda b: b[: len(b) // 2], "not a complete safetensors file"),
    "empty weights": ("adapter_model.safetensors", lambda b: b"", "not a complete safetensors file"),
    "malformed adapter_config.json": ("adapter_config.json", lambda b: b[: len(b) // 2], "is not valid JSON"),
}


def _damaged(trained_adapter: Path, tmp_path: Path, damage: str) -> tuple[Path, str, str]:
    """A copy of the adapter with one file damaged: (folder, damaged file, words of its error)."""
    import shutil

    name, cut, words = DAMAGES[damage]
    adapter = tmp_path / "work" / "adapter"
    shutil.copytree(trained_adapter, adapter)
    (adapter / name).write_bytes(cut((adapter / name).read_bytes()))
    return adapter, str(adapter / name), words


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", ["export merged", "export gguf", "ask"])
def test_a_damaged_adapter_is_one_error_line(command: str, damage: str, trained_adapter: Path, small_index: tuple, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """A truncated or empty adapter_model.safetensors, or a half-written adapter_config.json, was a
    SafetensorError or JSONDecodeError traceback from the loader (exit 1)."""
    adapter, damaged, words = _damaged(trained_adapter, tmp_path, damage)
    if command == "ask":
        argv = ["ask", "Where is the Eiffel Tower?", "--index", str(small_index[0]), "--adapter", str(adapter), "--device", "cpu"]
    else:
        argv = ["export", "--adapter", str(adapter), "--output", str(adapter.parent / "out"), "--format", command.split()[1]]
    _refused(argv, capsys, damaged, words, "retrain it with train-generator or restore it from a copy")
    assert sorted(p.name for p in adapter.parent.iterdir()) == ["adapter"]  # no export, no temporary folder


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_serve_refuses_a_damaged_adapter_before_binding_without_a_traceback(damage: str, trained_adapter: Path, small_index: tuple,
                                                                           tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                           caplog: pytest.LogCaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """serve loaded the models in its loading thread after binding: the loader's traceback was
    logged, then the error line. Now the adapter is checked first: one line, no port bound."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: pytest.fail("serve bound a port with a damaged adapter"))
    adapter, damaged, words = _damaged(trained_adapter, tmp_path, damage)
    with caplog.at_level(logging.DEBUG):
        _refused(["serve", "--index", str(small_index[0]), "--adapter", str(adapter), "--device", "cpu", "--port", "1"], capsys,
                 damaged, words)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capsys.readouterr().err + caplog.text


def test_serve_on_a_port_in_use_is_refused_before_the_models_load(trained_adapter: Path, small_index: tuple,
                                                                  capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn binds after the lifespan has loaded the models, then exits 1 with "address already in use" and no fix."""
    import socket

    _no_models(monkeypatch)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        _refused(["serve", "--index", str(small_index[0]), "--adapter", str(trained_adapter), "--device", "cpu", "--port", str(port)],
                 capsys, f"127.0.0.1:{port} is in use (another server?)", "pass another --port")


@pytest.mark.parametrize("blocked", ["parent is a file", "parent not writable"])
def test_export_into_an_unwritable_folder_is_refused_before_the_models_load(blocked: str, trained_adapter: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``export --format gguf --output DIR/g`` with DIR read-only was a PermissionError traceback from
    atomic._make_tmp_dir. We run as root, which ignores directory permissions, so the read-only case
    makes the temporary folder's creation fail as a read-only DIR does."""
    import errno
    import os

    _no_models(monkeypatch)
    folder = tmp_path / "DIR"
    if blocked == "parent is a file":
        folder.write_text("a user's file")
        words: tuple[str, ...] = (f"{folder} is a file",)
    else:
        folder.mkdir()
        real_mkdir = os.mkdir

        def mkdir(path, *a, **k):
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        words = (f"{folder} is not writable (Permission denied)", "choose a path in a folder you can write to")
    _refused(["export", "--adapter", str(trained_adapter), "--format", "gguf", "--output", str(folder / "g")], capsys,
             f"--output {folder / 'g'} cannot be written", *words)
    assert (folder.read_text() == "a user's file") if folder.is_file() else list(folder.iterdir()) == []


@pytest.mark.parametrize("stdin", ["", "\n   \n\t\n\n"])
def test_ask_with_no_question_on_standard_input_is_refused_before_the_models_load(stdin: str, small_index: tuple,
                                                                                  capsys: pytest.CaptureFixture,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank piped input made ask load the models, answer nothing and exit 0."""
    import io

    _no_models(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    _refused(["ask", "--index", str(small_index[0])], capsys, "no question on standard input", "--questions FILE")


def test_ask_with_standard_input_that_is_not_utf8_says_so_and_how_to_re_encode(small_index: tuple, capsys: pytest.CaptureFixture,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Latin-1 piped into ask in a UTF-8 locale was a UnicodeDecodeError traceback."""
    import io

    _no_models(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Who founded Caf\u00e9 Nero?\n".encode("latin-1")), encoding="utf-8"))
    _refused(["ask", "--index", str(small_index[0])], capsys, "line 1 of standard input is not UTF-8 text (byte 0xe9 at offset 15)",
             "iconv -f latin1 -t utf-8")


def test_index_pointing_at_another_commands_output_says_what_it_is(small_index: tuple, trained_adapter: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ask --index`` at an evaluate output or a file, ``eval-retrieval --index`` at an adapter: the
    message said to run build-index into that very folder, which build-index then refuses."""
    from rag_pipeline import generator

    monkeypatch.setattr(generator, "load_generator", lambda *a, **k: pytest.fail("the models were loaded before the index was checked"))
    idx = small_index[0]
    report = tmp_path / "results"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"schema_version": 3, "results": {}, "config": {"index": str(idx)}}))
    (report / "report.md").write_text("# Results\n")
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Where is the Eiffel Tower?", "answer": "Paris", "doc_id": "eiffel"}])
    cases = [
        (["ask", "Where is the Eiffel Tower?", "--index", str(report), "--device", "cpu"], report,
         ("is an evaluation report", f"its index is {idx}: pass --index {idx}")),
        (["ask", "Where is the Eiffel Tower?", "--index", str(qa), "--device", "cpu"], qa,
         ("is a file, not an index directory", "pass the index folder build-index wrote", f"build-index {qa} --index NEW_DIR")),
        (["eval-retrieval", "--index", str(trained_adapter), "--qa", str(qa)], trained_adapter,
         ("is a trained adapter", "adapters go to --adapter", "pass the index folder build-index wrote")),
    ]
    for argv, given, words in cases:
        line = _refused(argv, capsys, str(given), *words)
        assert f"--index {given}`" not in line, line  # never "build-index ... --index <this path>"


# ---------------------------------------------------------------------------------------------
# QA files without answers: evaluate, build-raft-dataset, eval-retrieval and calibrate refuse
# them, naming the missing column (they used to score every question as unanswerable, or build
# nothing "from 0 questions")
# ---------------------------------------------------------------------------------------------


def test_one_id_for_two_questions_is_refused_by_evaluate_and_calibrate(small_index: tuple, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Both were scored, and predictions.jsonl (keyed by id, as paired_f1.py reads it) held two records for one id."""
    _no_models(monkeypatch)
    idx = str(small_index[0])
    qa = tmp_path / "questions.csv"
    qa.write_text("id,question,answer\nq1,Where is the Eiffel Tower?,Paris\nq1,Who created Python?,Guido\n")
    words = (f"{qa}:3: id q1 is already used at {qa}:2 for a different question or answer", "give each question its own id")
    _refused(["evaluate", "--qa", str(qa), "--index", idx, "--output", str(tmp_path / "ev")], capsys, *words)
    _refused(["calibrate", "--qa", str(qa), "--index", idx, "--adapter", str(tmp_path / "adapter")], capsys, *words)


def test_a_qa_file_without_answers_is_refused_with_the_column_named(small_index: tuple, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    idx = str(small_index[0])
    qa = tmp_path / "questions.csv"
    qa.write_text("id,question,doc_id\nq1,Where is the Eiffel Tower?,eiffel\nq2,Who created Python?,python\nq3,How long is the Nile?,nile\n")
    words = (str(qa), "has no answer column", "looked for 'answer' or 'answers' or 'output' or 'response'",
             "columns seen: id, question, doc_id", "--answer-field")
    runs = tmp_path / "runs"
    _refused(["evaluate", "--qa", str(qa), "--index", idx, "--limit", "3", "--output", str(runs / "ev")], capsys, *words, "cannot be evaluated")
    _refused(["build-raft-dataset", "--qa", str(qa), "--index", idx, "--output", str(runs / "raft")], capsys, *words)
    _refused(["eval-retrieval", "--qa", str(qa), "--index", idx, "--level", "answer"], capsys, *words)
    _refused(["calibrate", "--qa", str(qa), "--index", idx, "--adapter", str(tmp_path / "adapter")], capsys, *words)
    blank = tmp_path / "blank.csv"
    blank.write_text("question,answer\nWhere is the Eiffel Tower?,\nWho created Python?,\n")
    _refused(["evaluate", "--qa", str(blank), "--index", idx, "--output", str(runs / "ev")], capsys, str(blank),
             "the answer column 'answer' is empty in all 2 answerable records", "answerable: false", "--answer-field")
    assert not runs.exists() or sorted(p.name for p in runs.iterdir()) == []  # nothing written, no lock left


# ---------------------------------------------------------------------------------------------
# serve: request bodies (malformed JSON said as such, a wrong Content-Type named, OpenAI fields
# the server does not honour refused or named instead of silently ignored)
# ---------------------------------------------------------------------------------------------


class _ParisAnswerer:
    """A served pipeline without models: answers "Paris [1]" (the requests under test are mostly refused before it)."""

    cfg, retriever, calibration = None, None, None

    def calibration_for(self, task: str, grounded: bool | None = None, schema: str | None = None) -> None:
        return None

    def answer_batch(self, questions: list[str], **kw: object) -> list:
        from rag_pipeline.answer.ask import Answer

        t = {"retrieval": 0.0, "prompt": 0.0, "generation": 0.0}
        return [Answer(q, "Paris [1]", False, None, [], [], t, "Paris [1]") for q in questions]


@pytest.fixture(scope="module")
def paris_server():
    from rag_pipeline.serve import ServeConfig
    from rag_pipeline.serve.app import create_app
    from serve_helpers import ThreadServer, wait_healthy

    with ThreadServer(create_app(ServeConfig(index="-"), "paris", "", _ParisAnswerer)) as srv:
        wait_healthy(srv.url, 30)
        yield srv.url


def _chat(url: str, **kw: object):
    import httpx

    return httpx.post(f"{url}/v1/chat/completions", timeout=30, **kw)


def test_serve_malformed_json_names_the_character_not_a_param(paris_server: str) -> None:
    """It answered 422 with param "40" (the offset) and "JSON decode error"."""
    body = '{"model": "paris", "messages": [{"role": "user", "content": "hi"}],,}'
    r = _chat(paris_server, content=body, headers={"Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None and err["code"] == "invalid_json", r.text
    assert err["message"].startswith(f"request body is not valid JSON at character {body.index(',,') + 1}"), err


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_serve_body_that_is_not_json_says_the_content_type(paris_server: str, content_type: str) -> None:
    """A text/plain body got "Input should be a valid dictionary or object to extract fields from"."""
    body = json.dumps({"model": "paris", "messages": [{"role": "user", "content": "hi"}]})
    r = _chat(paris_server, content=body, headers={"Content-Type": content_type})
    err = r.json()["error"]
    assert r.status_code == 415 and "Content-Type must be application/json" in err["message"] and content_type in err["message"], r.text
    assert "dictionary" not in err["message"]
    assert _chat(paris_server, content=body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


@pytest.mark.parametrize("extra,field", [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"tool_choice": "required"}, "tool_choice"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"frequency_penalty": -1}, "frequency_penalty"),
])
def test_serve_refuses_openai_fields_it_would_ignore(paris_server: str, extra: dict, field: str) -> None:
    """logprobs, tools and the like were silently ignored: the client believed it got them."""
    r = _chat(paris_server, json={"model": "paris", "messages": [{"role": "user", "content": "hi"}], **extra})
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == field and f"'{field}' is not supported" in err["message"], r.text
    assert err["code"] == "unsupported_field"


def test_a_response_format_the_server_cannot_honour_is_refused(paris_server: str) -> None:
    """response_format is decoded under its schema (tests/test_serve.py); a type it does not know is a 422, never ignored."""
    r = _chat(paris_server, json={"model": "paris", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "xml"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "response_format" and "'xml' is unknown" in r.json()["error"]["message"]


def test_serve_accepts_harmless_openai_fields_and_names_unknown_ones(paris_server: str) -> None:
    harmless = {"logprobs": False, "top_logprobs": 0, "user": "u-1", "metadata": {"a": "b"}, "presence_penalty": 0,
                "tool_choice": "none", "response_format": {"type": "text"}, "store": False}
    base = {"model": "paris", "messages": [{"role": "user", "content": "hi"}]}
    r = _chat(paris_server, json={**base, **harmless})
    assert r.status_code == 200 and "warning" not in r.headers and r.json()["choices"][0]["message"]["content"] == "Paris [1]"
    for stream in (False, True):
        r = _chat(paris_server, json={**base, "stream": stream, "max_token": 5, "temprature": 0.2})  # typos
        assert r.status_code == 200 and r.headers["warning"] == '299 rag-pipeline "ignored unknown fields: max_token, temprature"'


@pytest.mark.parametrize("stop,words", [
    (["a", "b", "c", "d", "e"], "at most 4 stop sequences"), ("", "stop sequence is empty"), (["x", ""], "stop sequence is empty"),
])
def test_serve_bad_stop_sequences_are_422(paris_server: str, stop: object, words: str) -> None:
    r = _chat(paris_server, json={"model": "paris", "messages": [{"role": "user", "content": "hi"}], "stop": stop})
    assert r.status_code == 422 and r.json()["error"]["param"] == "stop" and words in r.json()["error"]["message"], r.text
