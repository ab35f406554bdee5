"""The ``rag-pipeline`` command and its short aliases.

Each subcommand is a typed config dataclass (flags generated from its fields, ``--config YAML``
for a file) and a ``run`` function in the stage's module. Stage modules import torch and
friends inside functions, so ``--help`` stays fast. Errors are one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rag_pipeline.config import opt

# name -> (module, config class, help, positional (field, nargs, help) or None)
COMMANDS: dict[str, tuple[str, str, str, tuple[str, str, str] | None]] = {
    "build-index": ("rag_pipeline.index", "IndexConfig", "ingest documents, chunk, embed and write a FAISS index directory",
                    ("paths", "*", "files and folders to index")),
    "search": ("rag_pipeline.cli", "SearchConfig", "print the top-k chunks of an index for a query",
               ("query", "?", "the query text")),
    "eval-retrieval": ("rag_pipeline.eval_retrieval", "EvalRetrievalConfig", "Recall@k, MRR@10, Precision@k of an index on a QA file", None),
    "build-raft-dataset": ("rag_pipeline.raft", "RaftConfig", "RAFT training data: questions + oracle and distractor passages", None),
    "train-generator": ("rag_pipeline.train", "TrainConfig", "LoRA fine-tune the generator on a RAFT dataset", None),
    "ask": ("rag_pipeline.ask", "AskConfig", "answer a question from the index with cited sources", ("question", "?", "the question (none: read standard input)")),
    "evaluate": ("rag_pipeline.evaluate", "EvaluateConfig", "answer quality of base vs tuned generators, with a report", None),
    "serve": ("rag_pipeline.serve", "ServeConfig", "OpenAI-compatible HTTP server and web page over the retriever + adapter", None),
    "export": ("rag_pipeline.export", "ExportConfig", "write the adapter merged into its base: a Hugging Face folder or a GGUF file", None),
}


@dataclass
class SearchConfig:
    """Settings of ``search``."""

    query: str = opt("", "the query text")
    index: str = opt("indexes/disfl_qa", "index directory")
    k: int = opt(5, "number of chunks to show")
    hybrid: bool = opt(False, "fuse BM25 with dense retrieval (reciprocal-rank fusion)")
    json: bool = opt(False, "print results as JSON")
    snippet: int = opt(240, "characters of each chunk to show")


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from rag_pipeline import __version__
    from rag_pipeline.config import add_arguments

    parser = argparse.ArgumentParser(prog="rag-pipeline", description="Retrieval-augmented generation with a RAFT-tuned small generator.")
    parser.add_argument("--version", action="version", version=f"rag-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, cls_name, help_, positional) in COMMANDS.items():
        if (only and name != only) or not _available(name):
            continue
        cls = getattr(importlib.import_module(module), cls_name)
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="YAML", help="YAML file of settings (defaults < YAML < flags); see configs/")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
        skip: tuple[str, ...] = ()
        if positional:
            field, nargs, phelp = positional
            p.add_argument(f"_{field}", nargs=nargs, metavar=field.upper(), help=phelp, default=None)
            skip = (field,)
        add_arguments(p, cls, skip=skip)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("faiss.loader", "httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _config(name: str, args: argparse.Namespace) -> Any:
    from rag_pipeline.config import build_config, overrides_from_args

    module, cls_name, _, positional = COMMANDS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    overrides = overrides_from_args(cls, args)
    if positional:
        value = getattr(args, f"_{positional[0]}", None)
        if value not in (None, []):
            overrides[positional[0]] = value
    return build_config(cls, args.config, overrides)


def _print_build_index(result: dict) -> None:
    c = result["corpus"]
    if result.get("up_to_date"):
        print(f"index {result['config']['index']} is up to date ({c['chunks']} chunks): nothing to do (--force rebuilds)")
        return
    print(result["report"])
    for s in c["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    print(f"indexed {c['chunks']} chunks from {c['documents']} documents ({c['duplicates_dropped']} duplicate chunks dropped; "
          f"{result['counts']['embedded']} embedded, {result['counts']['reused']} reused) -> {result['config']['index']} "
          f"[{result['index']['type']}, dim {result['embedder']['dim']}, {result['build_seconds']} s]")


def print_hits(hits: list, snippet: int) -> None:
    for h in hits:
        c = h.chunk
        flat = " ".join(c.text.split())
        text = flat if len(flat) <= snippet else flat[:snippet].rsplit(" ", 1)[0] + " ..."
        print(f"[{h.rank}] {h.score:.4f}  {c.title or '(untitled)'}  ({c.source}#{c.position})\n    {text}")


def run_search(cfg: SearchConfig) -> list:
    from rag_pipeline.errors import InputError
    from rag_pipeline.retriever import Retriever

    if not cfg.query.strip():
        raise InputError("empty query: pass the text to search for, e.g. rag-pipeline search \"who founded X\"")
    return Retriever.load(cfg.index).search(cfg.query, cfg.k, cfg.hybrid)


def _dispatch(name: str, cfg: Any) -> int:
    if name == "build-index":
        from rag_pipeline.index import build_index

        _print_build_index(build_index(cfg))
    elif name == "search":
        hits = run_search(cfg)
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False)) if cfg.json else print_hits(hits, cfg.snippet)
    elif name == "eval-retrieval":
        from rag_pipeline.eval_retrieval import run

        m = run(cfg)
        if cfg.json:
            print(json.dumps(m, indent=2))
        else:
            print(f"{m['questions']} questions, {m['level']} level")
            for k, v in m.items():
                if k not in ("level", "questions"):
                    print(f"  {k:<14}{v:.4f}")
    else:
        module = importlib.import_module(COMMANDS[name][0])
        if _takes_config(getattr(module, "main", None)):
            return int(module.main(cfg) or 0)
        result = module.run(cfg)
        if isinstance(result, dict):
            print(json.dumps(result, indent=2, sort_keys=True, default=str))
            if result.get("status") == "interrupted":
                print("interrupted: a checkpoint was saved; continue with --resume", file=sys.stderr)
                return 130
    return 0


def _takes_config(fn: Callable | None) -> bool:
    """True for a stage's ``main(cfg: XConfig)`` (printing entry), not a ``main(argv)`` script entry."""
    import inspect

    if fn is None:
        return False
    params = list(inspect.signature(fn).parameters.values())
    return bool(params) and "Config" in str(params[0].annotation)


def main(argv: list[str] | None = None, only: str | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if only is not None:
        argv = [only, *argv]
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args)
    from rag_pipeline.errors import RagError

    try:
        return _dispatch(args.command, _config(args.command, args))
    except RagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written over existing artifacts", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"error: disk full while writing ({e.filename}): free space and run again; existing artifacts are intact", file=sys.stderr)
            return 2
        raise


def _alias(name: str) -> Callable[[], None]:
    def entry() -> None:
        sys.exit(main(only=name))

    return entry


build_index_main = _alias("build-index")
build_raft_dataset_main = _alias("build-raft-dataset")
train_generator_main = _alias("train-generator")
ask_main = _alias("ask")


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
