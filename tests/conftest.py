"""Shared fixtures. The suite is offline: no test may reach the Hugging Face Hub."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus" / "disfl_qa"

# Small documents with distinct vocabularies, so bag-of-words retrieval is unambiguous.
TOPICS = {
    "eiffel": ("Eiffel Tower", "The Eiffel Tower is a wrought iron lattice tower in Paris. It was completed in 1889 for the World Fair."),
    "rust": ("Rust", "Rust is a systems programming language focused on memory safety without a garbage collector."),
    "moon": ("Moon", "The Moon is the only natural satellite of Earth and orbits it every 27 days."),
    "nile": ("Nile", "The Nile is a major river in northeastern Africa flowing into the Mediterranean Sea."),
    "python": ("Python", "Python is a high level programming language created by Guido van Rossum in 1991."),
    "everest": ("Everest", "Mount Everest is the highest mountain above sea level, located in the Himalayas."),
}
# One question per topic document: moon, python, eiffel, everest, nile, rust.
QUESTIONS = ["What is the natural satellite of Earth?", "Who created the Python programming language?",
             "Where is the Eiffel Tower?", "What is the highest mountain above sea level?",
             "Which river flows into the Mediterranean Sea?", "What is Rust focused on?"]

# The integration tests' real question: Disfl-QA test split, q-08772d4d5b35, one the committed
# reference adapter answered right in the README's evaluation (gold span "1 October 1998";
# fp32 answers "1998 [1]").
REFERENCE_QUESTION = "Where no when was BSkyB's digital service launched?"
REFERENCE_GOLD_DOC, REFERENCE_GOLD = "p-db3be505bd19", "1998"


@dataclass(frozen=True)
class FakeChunk:
    """Stands in for a passage.StoredChunk in tests of the passage rules."""

    id: str
    doc_id: str
    text: str
    title: str = "t"
    source: str = "s"
    position: int = 0


@dataclass(frozen=True)
class FakeHit:
    """Stands in for a passage.Hit."""

    chunk: FakeChunk
    score: float = 1.0
    rank: int = 1


@pytest.fixture
def hashing_embedder():
    from rag_pipeline.index.embed import HashingEmbedder

    return HashingEmbedder(dim=64, max_tokens=64)


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as a module (the scripts are not a package), registered under ``NAME``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def docs_jsonl(tmp_path: Path) -> Path:
    """A JSONL corpus of six topic documents."""
    return write_jsonl(tmp_path / "docs" / "docs.jsonl", [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()])


@pytest.fixture
def small_index(tmp_path: Path, docs_jsonl: Path, hashing_embedder):
    """An index of the six topic documents built with the hashing embedder; returns (dir, config)."""
    from rag_pipeline.index.build import IndexConfig, build_index

    cfg = IndexConfig(paths=[str(docs_jsonl)], index=str(tmp_path / "idx"), embedder="hashing:64")
    build_index(cfg, embedder=hashing_embedder)
    return Path(cfg.index), cfg


@pytest.fixture(scope="session")
def minilm():
    """The real packaged all-MiniLM-L6-v2 (loaded once per session)."""
    from rag_pipeline.index.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A topic index (hashing:64), a tiny Llama, a second one with other weights, and an adapter of the first.

    Module-scoped: the ask, serve, web and export tests each build their own (tests may change the adapter).
    """
    from rag_pipeline.index.build import IndexConfig, build_index
    from rag_pipeline.index.embed import HashingEmbedder
    from tiny_models import build_tiny_llama, make_adapter

    root = tmp_path_factory.mktemp("ask")
    docs = write_jsonl(root / "docs.jsonl", [{"id": k, "title": t, "text": x} for k, (t, x) in TOPICS.items()])
    index = root / "idx"
    build_index(IndexConfig(paths=[str(docs)], index=str(index), embedder="hashing:64"), embedder=HashingEmbedder(64, 64))
    base = build_tiny_llama(root / "llama")
    return {"root": root, "index": index, "base": base, "other": build_tiny_llama(root / "llama-other", seed=1),
            "adapter": make_adapter(base, root / "adapter")}
