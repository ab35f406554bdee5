"""The QA reader: every format and field mapping gives the same records; errors name file, line/row and field."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from rag_pipeline.errors import InputError
from rag_pipeline.qa import QAFields, QAItem, load_qa

RECORDS = [
    {"id": "k1", "question": "What is the capital of Malaysia?", "answer": "Kuala Lumpur is the capital city of Malaysia.",
     "context": "Kuala Lumpur, the capital of Malaysia, lies where the Klang and Gombak rivers meet.\nIt was founded in 1857."},
    {"id": "k2", "question": "Which rivers meet there, \"roughly\"?", "answer": ["The Klang and the Gombak", "Klang, Gombak"],
     "context": "Kuala Lumpur, the capital of Malaysia, lies where the Klang and Gombak rivers meet.\nIt was founded in 1857.",
     "doc_id": "kl"},
    {"id": "k3", "question": "Who painted the ceiling; and when?", "answer": "Michelangelo, 1508–1512", "answerable": True},
    {"id": "k4", "question": "What colour is the flag of Atlantis?", "answer": [], "answerable": False, "doc_id": "atl"},
]


def _expected(tmp_path: Path) -> list[tuple]:
    return [_key(it) for it in load_qa(_write_jsonl(tmp_path / "reference.jsonl", RECORDS))]


def _key(it: QAItem) -> tuple:
    return (it.id, it.question, tuple(it.answers), it.doc_id, it.answerable, it.context)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _flat(rows: list[dict]) -> list[dict]:
    """The records with every field present (null when absent), as a table needs them."""
    cols = ["id", "question", "answer", "context", "doc_id", "answerable"]
    return [{c: r.get(c) for c in cols} for r in rows]


def _write(fmt: str, tmp_path: Path, records: list[dict] | None = None) -> Path:
    rows_in = records or RECORDS
    if fmt == "jsonl":
        return _write_jsonl(tmp_path / "qa.jsonl", rows_in)
    if fmt == "json-array":
        path = tmp_path / "qa.json"
        path.write_text(json.dumps(rows_in, indent=2, ensure_ascii=False), encoding="utf-8")
        return path
    if fmt == "json-lines-in-.json":
        return _write_jsonl(tmp_path / "qa.json", rows_in)
    if fmt == "json-data-object":
        path = tmp_path / "qa.json"
        path.write_text(json.dumps({"version": 1, "data": rows_in}), encoding="utf-8")
        return path
    if fmt in ("csv", "tsv"):
        path = tmp_path / f"qa.{fmt}"
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(_flat(rows_in)[0]), delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            for r in _flat(rows_in):
                a = r["answer"]
                w.writerow({**r, "answer": a if isinstance(a, str) else json.dumps(a, ensure_ascii=False),
                            "answerable": "" if r["answerable"] is None else str(r["answerable"]).lower()})
        return path
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**r, "answer": [r["answer"]] if isinstance(r["answer"], str) else r["answer"]} for r in _flat(rows_in)]
        path = tmp_path / "qa.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if fmt == "datasets":
        from datasets import Dataset

        rows = [{**r, "answer": [r["answer"]] if isinstance(r["answer"], str) else r["answer"]} for r in _flat(rows_in)]
        Dataset.from_list(rows).save_to_disk(str(tmp_path / "qa_ds"))
        return tmp_path / "qa_ds"
    raise AssertionError(fmt)


FORMATS = ["jsonl", "json-array", "json-lines-in-.json", "json-data-object", "csv", "tsv", "parquet", "datasets"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_yields_the_same_records(fmt: str, tmp_path: Path) -> None:
    items = load_qa(_write(fmt, tmp_path))
    assert [_key(it) for it in items] == _expected(tmp_path)
    assert items[0].context.endswith("It was founded in 1857.") and items[3].answerable is False
    assert items[1].answers == ["The Klang and the Gombak", "Klang, Gombak"]


def test_common_field_names_are_recognised(tmp_path: Path) -> None:
    rows = [
        {"query": "Q1?", "response": "A1", "passage": "P1"},
        {"instruction": "Q2?", "output": "A2", "document": "P2"},
        {"question": "Q3?", "answers": {"text": ["A3", "a3"], "answer_start": [0, 0]}, "context": "P3"},  # SQuAD (datasets)
        {"question": "Q4?", "answers": [{"text": "A4", "answer_start": 3}]},  # SQuAD (JSON)
    ]
    items = load_qa(_write_jsonl(tmp_path / "qa.jsonl", rows))
    assert [(it.question, it.answers, it.context) for it in items] == [
        ("Q1?", ["A1"], "P1"), ("Q2?", ["A2"], "P2"), ("Q3?", ["A3", "a3"], "P3"), ("Q4?", ["A4"], None)]


def test_configured_field_names_map_to_the_same_records(tmp_path: Path) -> None:
    renamed = [{"qid": r["id"], "prompt": r["question"], "gold": {"text": r["answer"]}, "ctx": r.get("context"),
                "source_doc": r.get("doc_id"), "answerable": r.get("answerable", True), "question": "decoy?"} for r in RECORDS]
    fields = QAFields(question="prompt", answer="gold.text", context="ctx", id="qid", doc_id="source_doc")
    items = load_qa(_write_jsonl(tmp_path / "renamed.jsonl", renamed), fields)
    assert [_key(it) for it in items] == _expected(tmp_path)
    # Without the mapping, the decoy field is read: the mapping is what made the difference.
    assert {it.question for it in load_qa(tmp_path / "renamed.jsonl")} == {"decoy?"}


def test_squad_nested_json(tmp_path: Path) -> None:
    squad = {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{"context": "The Normans were in Normandy.", "qas": [
        {"id": "a1", "question": "Where were the Normans?", "answers": [{"text": "Normandy", "answer_start": 21}], "is_impossible": False},
        {"id": "a2", "question": "Where were the Danes?", "answers": [], "is_impossible": True}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    a, b = load_qa(path)
    assert (a.id, a.answers, a.context, a.title, a.answerable) == ("a1", ["Normandy"], "The Normans were in Normandy.", "Normans", True)
    assert (b.id, b.answers, b.answerable) == ("a2", [], False)


def test_default_id_covers_the_context(tmp_path: Path) -> None:
    rows = [{"question": "Who founded it?", "answer": "A", "context": "Alpha was founded by A."},
            {"question": "Who founded it?", "answer": "B", "context": "Beta was founded by B."},
            {"question": "Who founded it?", "answer": "C"}]
    a, b, c = load_qa(_write_jsonl(tmp_path / "qa.jsonl", rows))
    assert a.id != b.id
    assert c.id == "q-" + hashlib.sha256(b"Who founded it?").hexdigest()[:12]  # ids of context-free records are unchanged


@pytest.mark.parametrize("fmt,where", [("jsonl", r"qa\.jsonl:3"), ("json-array", r"qa\.json:\d+ \(record 3\)"),
                                        ("csv", r"qa\.csv:6"), ("parquet", r"qa\.parquet: row 3"), ("datasets", r"qa_ds: row 3")])
def test_bad_record_names_file_line_and_field(fmt: str, where: str, tmp_path: Path) -> None:
    bad = [dict(r) for r in RECORDS]
    bad[2]["question"] = None  # record 3 has no question (CSV: lines 2-5 hold records 1-2, whose context spans two lines)
    with pytest.raises(InputError, match=rf"{where}: missing or non-string 'question': looked for 'question' or 'query' or 'instruction'"):
        load_qa(_write(fmt, tmp_path, bad))


def test_format_errors_name_the_place_and_the_fix(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "x?", "answer": 3}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:2: field 'answer' must be a string or a list of strings .*--answer-field"):
        load_qa(p)
    p.write_text('{"question": "ok?", "answer": "yes", "context": ["not", "text"]}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:1: field 'context' \(context\) must be a string.*--context-field"):
        load_qa(p)
    j = tmp_path / "q.json"
    j.write_text('[\n  {"question": "a?", "answer": "b"},\n  {"question": "c?" "answer": "d"}\n]')
    with pytest.raises(InputError, match=r"q\.json:3: malformed JSON"):
        load_qa(j)
    with pytest.raises(InputError, match=r"unknown type '\.xlsx': use \.jsonl, \.json, \.csv"):
        (tmp_path / "q.xlsx").write_text("x")
        load_qa(tmp_path / "q.xlsx")
    c = tmp_path / "q.csv"
    c.write_text("question,answer\nWhat?,yes,extra\n")
    with pytest.raises(InputError, match=r"q\.csv:2: more cells than header columns"):
        load_qa(c)
    c.write_text('question,answer\n"What is it?,yes\nWho?,me\n')  # a quote left open swallowed every later row into one cell
    with pytest.raises(InputError, match=r"q\.csv:\d+: .*check that every quote in the cells is closed"):
        load_qa(c)
    c.write_text('question,answer,context\nWhat?,yes,"' + "word " * 40_000 + 'yes"\n')  # a passage over 128 KiB is a cell like any
    assert len(load_qa(c)[0].context) > 131_072
    (tmp_path / "q.parquet").write_text("question,answer\nWhat?,yes\n")  # a CSV renamed
    with pytest.raises(InputError, match=r"q\.parquet is not a readable Parquet file .*: pass the Parquet file itself"):
        load_qa(tmp_path / "q.parquet")


def test_a_jsonl_line_may_hold_the_line_separators_json_allows_raw(tmp_path: Path) -> None:
    """str.splitlines() also cut at U+2028 and U+0085, which json_line writes raw: a valid file read as malformed."""
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "What\u2028is it?", "answer": "a\u0085b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [(q.question, q.answers) for q in load_qa(p)] == [("What\u2028is it?", ["a\u0085b"])]


def test_datasetdict_folder_names_its_splits(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{**r, "answer": [r["answer"]] if isinstance(r["answer"], str) else r["answer"]} for r in _flat(RECORDS)]
    DatasetDict({"train": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[2:])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"holds a DatasetDict with splits train, test: pass one split's folder"):
        load_qa(tmp_path / "dd")
    assert [it.id for it in load_qa(tmp_path / "dd" / "train")] == ["k1", "k2"]


@pytest.mark.parametrize("command", ["build-raft-dataset", "eval-retrieval", "evaluate", "ask", "calibrate"])
def test_every_qa_command_takes_the_field_flags(command: str) -> None:
    from rag_pipeline import cli

    flags = ["--question-field", "prompt", "--answer-field", "gold.text", "--context-field", "ctx", "--id-field", "qid",
             "--doc-id-field", "source"]
    required = {"calibrate": ["--adapter", "some/adapter"]}.get(command, [])
    args = cli.build_parser(command).parse_args([command, *flags, *required])
    cfg = cli._config(command, args)
    assert cfg.qa_fields() == QAFields(question="prompt", answer="gold.text", context="ctx", id="qid", doc_id="source")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_a_file_in_another_encoding_names_the_byte_its_line_and_the_fix(suffix: str, tmp_path: Path) -> None:
    """A spreadsheet's Windows-1252 export (É = 0xc9) is an InputError with the fix, in every text format."""
    sep = "\t" if suffix == ".tsv" else ","
    rows = {".csv": f"question{sep}answer\nWhere is it?{sep}Paris\nWho wrote it?{sep}Émile Zola\n",
            ".tsv": f"question{sep}answer\nWhere is it?{sep}Paris\nWho wrote it?{sep}Émile Zola\n",
            ".jsonl": '{"question": "Where is it?", "answer": "Paris"}\n{"question": "Who wrote it?", "answer": "Émile Zola"}\n',
            ".json": '[{"question": "Where is it?", "answer": "Paris"},\n {"question": "Who wrote it?", "answer": "Émile Zola"}]\n'}
    p = tmp_path / f"q{suffix}"
    p.write_bytes(rows[suffix].encode("cp1252"))
    line = 3 if suffix in (".csv", ".tsv") else 2
    with pytest.raises(InputError, match=rf"QA file .*q\{suffix} is not UTF-8 \(byte 0xc9 at line {line}, .*re-encode it as UTF-8.*iconv"):
        load_qa(p)
    p.write_bytes(b"\xef\xbb\xbf" + rows[suffix].encode("utf-8"))  # UTF-8 with a byte-order mark (Excel's "CSV UTF-8") reads
    assert [it.answers for it in load_qa(p)] == [["Paris"], ["Émile Zola"]]
