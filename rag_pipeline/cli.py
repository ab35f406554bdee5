"""The ``rag-pipeline`` command and its short aliases.

A table (:data:`COMMANDS`) from command name to its module, config class, help and positional
argument. Every command's module has the same pair: ``run(cfg)`` for library use and
``main(cfg) -> int`` for the terminal (prints, returns the exit status); the CLI builds the
config (flags generated from its fields, ``--config YAML`` for a file) and calls ``main``.
Stage modules import torch and friends inside functions, so ``--help`` stays fast. Errors are
one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from rag_pipeline import __version__
from rag_pipeline.config import add_arguments, build_config, overrides_from_args
from rag_pipeline.errors import InputError, RagError

# name -> (module, config class, help, positional (field, nargs, help) or None); module.main(cfg) runs it
COMMANDS: dict[str, tuple[str, str, str, tuple[str, str, str] | None]] = {
    "build-index": ("rag_pipeline.index.build", "IndexConfig", "ingest documents, chunk, embed and write a FAISS index directory",
                    ("paths", "*", "files and folders to index")),
    "search": ("rag_pipeline.index.search", "SearchConfig", "print the top-k chunks of an index for a query",
               ("query", "?", "the query text")),
    "eval-retrieval": ("rag_pipeline.eval.retrieval", "EvalRetrievalConfig", "Recall@k, MRR@10, Precision@k of an index on a QA file", None),
    "build-raft-dataset": ("rag_pipeline.data.raft", "RaftConfig", "RAFT training data: questions + oracle and distractor passages", None),
    "train-generator": ("rag_pipeline.train", "TrainConfig", "LoRA fine-tune the generator on a RAFT dataset", None),
    "ask": ("rag_pipeline.answer.ask", "AskConfig", "answer a question from the index with cited sources", ("question", "?", "the question (none: read standard input)")),
    "evaluate": ("rag_pipeline.eval.evaluate", "EvaluateConfig", "answer quality of base vs tuned generators, with a report", None),
    "calibrate": ("rag_pipeline.eval.calibrate", "CalibrateConfig", "choose an adapter's abstention threshold on validation questions", None),
    "serve": ("rag_pipeline.serve", "ServeConfig", "OpenAI-compatible HTTP server and web page over the retriever + adapter", None),
    "export": ("rag_pipeline.export", "ExportConfig", "write the adapter merged into its base: a Hugging Face folder or a GGUF file", None),
    "tune": ("rag_pipeline.tune", "TuneConfig", "documents to a tuned, calibrated, evaluated adapter in one command, within a time budget",
             ("paths", "*", "document files and folders")),
}


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
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


# Third-party loggers whose messages below ERROR show only with -v.
NOISY = ("faiss", "httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "datasets", "accelerate", "bm25s", "peft", "torch")


def _quiet_third_parties(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or record.name.split(".")[0] not in NOISY


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Third-party chatter is for -v: transformers' and peft's deprecation notices, bm25s's "Building index
    # from IDs objects", peft's "Could not find a config file" say nothing a user of this tool can act on.
    if args.verbose:
        return
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:  # bm25s sets its own logger to DEBUG when imported, later than this
        if _quiet_third_parties not in handler.filters:
            handler.addFilter(_quiet_third_parties)
    # transformers configures its own handler (not propagating) from these when first imported; a user's setting wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights", "Saving the dataset"
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch|bm25s|accelerate|datasets|pyarrow)(\.|$)")


def _config(name: str, args: argparse.Namespace) -> Any:
    module, cls_name, _, positional = COMMANDS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    overrides = overrides_from_args(cls, args)
    if positional:
        value = getattr(args, f"_{positional[0]}", None)
        _reject_blank(positional, value)
        if value not in (None, []):
            overrides[positional[0]] = value
    return build_config(cls, args.config, overrides)


def _reject_blank(positional: tuple[str, str, str], value: str | list[str] | None) -> None:
    """An argument given as an empty string is an error, not "no argument": ``ask ""`` would read
    standard input and ``build-index ""`` would index the working directory."""
    field, _, help_ = positional
    for v in value if isinstance(value, list) else [] if value is None else [value]:
        if not v.strip():
            also = ", or no argument at all to read standard input" if "standard input" in help_ else ""
            raise InputError(f"empty {field} argument {v!r}: pass {help_.split(' (')[0]}{also}")


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

    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return module.main(_config(args.command, args))
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
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and e.filename:  # a file the user may not read or write
            print(f"error: {e.strerror}: {e.filename}: fix its permissions (or its folder's), or pass another path; "
                  "existing artifacts are intact", file=sys.stderr)
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
