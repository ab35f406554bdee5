"""Checks on the bundled Disfl-QA corpus and on the detokenizer that built it.

Standard library + pytest only; the BIG-bench tarball is not needed.
"""

import importlib.util
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus" / "disfl_qa"
SCRIPT = ROOT / "scripts" / "make_corpus.py"
SPLITS = ("train", "dev", "test")
#: Answers that cannot be recovered verbatim (source typos, math spacing).
MAX_NOT_VERBATIM = 10


@lru_cache(maxsize=None)
def make_corpus() -> ModuleType:
    """Import scripts/make_corpus.py by path."""
    spec = importlib.util.spec_from_file_location("make_corpus", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_corpus", module)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse every line of a JSON Lines file (failing on the first bad one)."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            assert line.endswith("\n"), f"{path}:{number}: missing newline"
            records.append(json.loads(line))
    return records


@lru_cache(maxsize=None)
def documents() -> tuple[dict[str, Any], ...]:
    return tuple(read_jsonl(CORPUS / "documents.jsonl"))


@lru_cache(maxsize=None)
def split(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(read_jsonl(CORPUS / "qa" / f"{name}.jsonl"))


def all_qas() -> list[dict[str, Any]]:
    return [qa for name in SPLITS for qa in split(name)]


# --------------------------------------------------------------------------
# Committed files
# --------------------------------------------------------------------------


def test_files_exist_and_are_small() -> None:
    paths = [CORPUS / "documents.jsonl"] + [CORPUS / "qa" / f"{s}.jsonl" for s in SPLITS]
    for path in paths:
        assert path.is_file(), path
    assert sum(p.stat().st_size for p in paths) < 10 * 1024 * 1024


def test_documents_schema_and_ids() -> None:
    docs = documents()
    assert len(docs) > 1000
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids))
    assert ids == sorted(ids)
    for doc in docs:
        assert set(doc) == {"id", "title", "text"}
        assert all(isinstance(doc[k], str) and doc[k].strip() for k in doc)
        assert re.fullmatch(r"p-[0-9a-f]{12}", doc["id"])
    assert len({d["text"] for d in docs}) == len(docs)


def test_qa_schema_ids_and_links() -> None:
    doc_ids = {d["id"] for d in documents()}
    seen: set[str] = set()
    for name in SPLITS:
        qas = split(name)
        assert qas, name
        for qa in qas:
            assert set(qa) == {"id", "question", "answer", "doc_id", "answerable"}
            assert isinstance(qa["id"], str) and re.fullmatch(r"q-[0-9a-f]{12}", qa["id"])
            assert isinstance(qa["question"], str) and qa["question"].strip()
            assert isinstance(qa["answer"], list) and all(isinstance(a, str) and a for a in qa["answer"])
            assert len(qa["answer"]) == len(set(qa["answer"]))
            assert isinstance(qa["answerable"], bool)
            assert qa["doc_id"] in doc_ids
            assert qa["id"] not in seen
            seen.add(qa["id"])


def test_answerable_iff_answer_list_nonempty() -> None:
    for qa in all_qas():
        assert qa["answerable"] == bool(qa["answer"]), qa["id"]
        assert "unknown" not in [a.lower() for a in qa["answer"]]


def test_splits_are_disjoint_by_paragraph_and_roughly_80_10_10() -> None:
    owners: dict[str, str] = {}
    for name in SPLITS:
        for qa in split(name):
            assert owners.setdefault(qa["doc_id"], name) == name, qa["doc_id"]
    counts = {name: sum(1 for v in owners.values() if v == name) for name in SPLITS}
    total = sum(counts.values())
    assert 0.75 < counts["train"] / total < 0.85
    assert 0.07 < counts["dev"] / total < 0.13
    assert 0.07 < counts["test"] / total < 0.13


def test_lines_sorted_by_document_then_id() -> None:
    rank = {d["id"]: i for i, d in enumerate(documents())}
    for name in SPLITS:
        keys = [(rank[qa["doc_id"]], qa["id"]) for qa in split(name)]
        assert keys == sorted(keys), name


def test_answers_are_verbatim_in_their_paragraph() -> None:
    text = {d["id"]: d["text"] for d in documents()}
    missing = [
        (qa["id"], answer)
        for qa in all_qas()
        for answer in qa["answer"]
        if answer not in text[qa["doc_id"]]
    ]
    answerable = sum(qa["answerable"] for qa in all_qas())
    assert answerable > 5000
    if missing:
        print(f"{len(missing)} answers not verbatim in their paragraph: {missing}")
    assert len(missing) <= MAX_NOT_VERBATIM, missing


LEFTOVERS = re.compile(r" ' ?s\b| ' t\b|\w ' \w| [,;?!%)\]](?!\.)| [,;:] |[(\[] |\w - \w|\$ \d|\d , \d{3}\b|\w \.(?!\.)")


def test_no_detokenization_leftovers() -> None:
    texts = [d["text"] for d in documents()] + [qa["question"] for qa in all_qas()]
    bad = [m.group() + " in " + t[max(0, m.start() - 30): m.end() + 30] for t in texts for m in LEFTOVERS.finditer(t)]
    assert not bad, bad[:10]
    assert not any("  " in t or t != t.strip() for t in texts)
    assert not any("\\" in t for t in texts)


# --------------------------------------------------------------------------
# detokenize()
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokenized", "expected"),
    [
        ("the Earth ' s atmosphere", "the Earth's atmosphere"),
        ("they don ' t know", "they don't know"),
        ("the states ' rights", "the states' rights"),
        ("in the 1960 ' s", "in the 1960's"),
        ("the Qur ' an", "the Qur'an"),
        ("a ' new world ' order", "a 'new world' order"),
        ("known as ' Bucks Point ' lace", "known as 'Bucks Point' lace"),
        ('he said " hello , world " .', 'he said "hello, world".'),
        ('( " Commonly called " )', '("Commonly called")'),
        ("born in 1990 ( see below ) .", "born in 1990 (see below)."),
        ("well - known", "well-known"),
        ("and / or", "and/or"),
        ("from 1910 – 1940", "from 1910–1940"),
        ("24 August – 3 October", "24 August – 3 October"),
        ("the Miller – Rabin test", "the Miller–Rabin test"),
        ("10 , 000 people", "10,000 people"),
        ("c . 1 , 300 , 000 people", "c. 1,300,000 people"),
        ("In 1990 , 200 people", "In 1990, 200 people"),
        ("a 3 . 5 % rise", "a 3.5% rise"),
        ("costs $ 5 billion", "costs $5 billion"),
        ("US $ 100 , 000", "US$100,000"),
        ("the U . S . Army", "the U.S. Army"),
        ("e . g . , apples", "e.g., apples"),
        ("at 10 : 30 a . m . today", "at 10:30 a.m. today"),
        ("G . H . Hardy", "G. H. Hardy"),
        ("X . 25 networks", "X.25 networks"),
        ("15 ° C ( 59 ° F )", "15 °C (59 °F)"),
        ("AT & T and Standard & Poor", "AT&T and Standard & Poor"),
        ("p − 1 and s = − 2", "p − 1 and s = −2"),
        ("O ( n2 ) time", "O(n2) time"),
        ("As of 2010 [ update ] , there", "As of 2010[update], there"),
        ("rise ; then : fall !", "rise; then: fall!"),
        ("a b  c", "a b c"),
        ("", ""),
    ],
)
def test_detokenize_cases(tokenized: str, expected: str) -> None:
    assert make_corpus().detokenize(tokenized) == expected


@pytest.mark.parametrize(
    "plain",
    ["Earth's atmosphere", "40,000", "(p − 1)! + 1", "100–106 °F", '"entrenched" provisions', "U.S. Army"],
)
def test_detokenize_leaves_plain_text_alone(plain: str) -> None:
    assert make_corpus().detokenize(plain) == plain


def test_clean_question_undoes_escape_debris() -> None:
    mc = make_corpus()
    assert mc.clean_question("far from Czerniak \\ \\ u00f3w Lake ?") == "far from Czerniaków Lake?"
    assert mc.clean_question('his \\ " Apologie \\ " ?') == 'his "Apologie"?'
    assert mc.junk_reason("#VALUE!") == "placeholder"
    assert mc.junk_reason("What is it?") is None
