"""CLI: fast help without torch, one-line errors with exit 2, search output."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from rag_pipeline.cli import main


def test_help_imports_no_torch() -> None:
    # What keeps --help fast (0.16 s, bench/bench_ask.py) is importing no heavy library; timed in bench/, not here.
    code = "import sys; from rag_pipeline.cli import build_parser; build_parser(); print(sorted({'torch', 'transformers', 'faiss'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "rag_pipeline.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "build-index" in r.stdout


def test_bad_input_is_one_line_exit_2(tmp_path, capsys) -> None:
    rc = main(["build-index", str(tmp_path / "missing"), "--index", str(tmp_path / "i"), "--embedder", "hashing:64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: input path") and "does not exist" in err[0]


def test_unknown_model_is_one_line_with_fix(tmp_path, capsys) -> None:
    (tmp_path / "a.txt").write_text("hello world")
    rc = main(["build-index", str(tmp_path / "a.txt"), "--index", str(tmp_path / "i"), "--embedder", "nobody/no-such-model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not in the Hugging Face cache" in err[0] and "pass a local directory" in err[0]


def test_build_then_search_and_eval(tmp_path, docs_jsonl, capsys) -> None:
    idx = str(tmp_path / "i")
    assert main(["build-index", str(docs_jsonl), "--index", idx, "--embedder", "hashing:64"]) == 0
    assert "indexed 6 chunks" in capsys.readouterr().out
    assert main(["build-index", str(docs_jsonl), "--index", idx, "--embedder", "hashing:64"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["search", "natural satellite of Earth", "--index", idx, "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["doc_id"] == "moon" and hits[0]["title"] == "Moon"
    assert main(["search", "   ", "--index", idx]) == 2
    assert "empty query" in capsys.readouterr().err


def test_every_command_module_has_the_stage_pair() -> None:
    """The CLI is a table: each command's module exposes run(cfg) (library) and main(cfg) -> int (terminal)."""
    import importlib
    import inspect

    from rag_pipeline import cli

    for name, (module, cls_name, _, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        assert hasattr(mod, cls_name), name
        for fn in ("run", "main"):
            params = list(inspect.signature(getattr(mod, fn)).parameters)
            assert params and params[0] == "cfg", (name, fn, params)
    assert not hasattr(cli, "_takes_config") and not hasattr(cli, "_dispatch")


def test_search_text_output(tmp_path, docs_jsonl, capsys) -> None:
    idx = str(tmp_path / "i")
    assert main(["build-index", str(docs_jsonl), "--index", idx, "--embedder", "hashing:64", "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "natural satellite of Earth", "--index", idx, "-k", "1", "--snippet", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[1] ") and "Moon  (" in out[0] and out[1] == "    The Moon is the ..."


def test_a_permission_error_on_a_file_is_one_line_exit_2(small_index, monkeypatch, capsys) -> None:
    """A file the user may not read (or a folder not writable) is named in one line, not a traceback."""
    import errno

    from rag_pipeline.index import search as search

    def denied(cfg):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/private/qa.jsonl")

    monkeypatch.setattr(search, "main", denied)
    assert main(["search", "Eiffel tower", "--index", str(small_index[0])]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: Permission denied: /data/private/qa.jsonl: fix its permissions (or its folder's), or pass another path; "
        "existing artifacts are intact"]


def test_third_party_chatter_shows_only_with_verbose(caplog: pytest.LogCaptureFixture) -> None:
    """bm25s, transformers and peft notices below ERROR are dropped from the terminal unless -v
    (bm25s sets its own logger to DEBUG when imported, so the level alone would not hold)."""
    import argparse
    import logging

    from rag_pipeline import cli

    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        cli._setup_logging(argparse.Namespace(verbose=False, quiet=False))
        bm25 = logging.getLogger("bm25s")
        bm25.setLevel(logging.DEBUG)
        assert not handler.filter(bm25.makeRecord("bm25s", logging.DEBUG, __file__, 1, "Building index from IDs objects", None, None))
        assert handler.filter(bm25.makeRecord("bm25s", logging.ERROR, __file__, 1, "broken", None, None))
        assert handler.filter(logging.getLogger("rag_pipeline.answer.ask").makeRecord("rag_pipeline.answer.ask", logging.INFO, __file__, 1, "ours", None, None))
    finally:
        logging.getLogger().removeHandler(handler)


def test_the_package_map_lists_every_command_with_its_module() -> None:
    """The package docstring's table names every command of the CLI and the module that runs it."""
    import re

    import rag_pipeline
    from rag_pipeline.cli import COMMANDS

    rows = dict(re.findall(r"^``([a-z-]+)``\s+``([a-z_.]+)``", rag_pipeline.__doc__ or "", re.M))
    assert rows == {name: module.removeprefix("rag_pipeline.") for name, (module, *_) in COMMANDS.items()}
