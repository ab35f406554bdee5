"""The one QA reader, used by every command that takes questions.

Formats (by suffix, or a folder): JSONL (one object per line), JSON (an array of objects; an
object with a ``data`` list, SQuAD's nested ``data/paragraphs/qas`` included; JSON lines in a
``.json`` file), CSV and TSV with a header row, Parquet, and a ``datasets`` folder saved with
``save_to_disk`` (one split's folder; a ``DatasetDict`` folder names its splits).

Fields, each configurable (:class:`QAFields`, ``--question-field`` ...); by default the first of
the common names present in a record:

* question: ``question``, ``query``, ``instruction`` (a string);
* answer: ``answer``, ``answers``, ``output``, ``response``: a string, a list of strings, or
  SQuAD's ``{"text": [...]}`` / ``[{"text": ...}]`` (a dotted name such as ``answers.text`` works too);
* context: ``context``, ``passage``, ``document``: the passage that answers it (optional);
* id: ``id`` (default: a hash of the question, and of the context when there is one);
* doc_id: ``doc_id``, the indexed document holding the answer (optional);
* ``answerable`` (default true; SQuAD's ``is_impossible`` is read as its negation) and ``title``.

A bad record's error names the file, the line (JSON, JSONL, CSV) or row (Parquet, datasets) and
the field.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_pipeline.config import opt
from rag_pipeline.errors import InputError

log = logging.getLogger(__name__)

FORMATS = ".jsonl, .json, .csv, .tsv, .parquet or a datasets folder (save_to_disk)"
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "question": ("question", "query", "instruction"),
    "answer": ("answer", "answers", "output", "response"),
    "context": ("context", "passage", "document"),
    "id": ("id",),
    "doc_id": ("doc_id",),
}


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    doc_id: str | None = None
    answerable: bool = True
    where: str = field(default="", compare=False)  # "file:line" it was read from, for messages
    context: str | None = None  # the record's own passage, when it has one
    title: str = ""  # the passage's title, when the record has one
    summary: str | None = None  # the record's own summary of its passage about the question (``--task summary``'s target)
    extract: dict[str, Any] | None = field(default=None, compare=False)  # the record's own JSON answer (``--task extract``'s target)


@dataclass(frozen=True)
class QAFields:
    """Which record field holds what; '' = the first of :data:`DEFAULT_NAMES` present."""

    question: str = ""
    answer: str = ""
    context: str = ""
    id: str = ""
    doc_id: str = ""

    def names(self, role: str) -> tuple[str, ...]:
        given = getattr(self, role)
        return (given,) if given else DEFAULT_NAMES[role]

    def flag(self, role: str) -> str:
        return f"--{role.replace('_', '-')}-field"


@dataclass
class QAFieldConfig:
    """The field-name settings shared by every command that reads QA files (a config mixin)."""

    question_field: str = opt("", "QA field holding the question; '' = question, query or instruction")
    answer_field: str = opt("", "QA field holding the answer(s), dotted for nested ones (answers.text); '' = answer, answers, output or response")
    context_field: str = opt("", "QA field holding the record's own passage; '' = context, passage or document")
    id_field: str = opt("", "QA field holding the question id; '' = id (absent: a hash of the question and context)")
    doc_id_field: str = opt("", "QA field holding the id of the indexed document with the answer; '' = doc_id")

    def qa_fields(self) -> QAFields:
        return QAFields(self.question_field, self.answer_field, self.context_field, self.id_field, self.doc_id_field)


# ---------------------------------------------------------------------------------------------
# Records: (where, dict) from each format
# ---------------------------------------------------------------------------------------------


def _jsonl_records(path: Path, text: str, first_line: int = 1) -> Iterator[tuple[str, Any]]:
    # "\n" only, as JSON Lines defines: str.splitlines() would also cut at U+2028 or U+0085, which JSON strings hold raw
    for lineno, line in enumerate(text.split("\n"), first_line):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg}): fix or remove that line") from None
        yield f"{path}:{lineno}", obj


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_array(path: Path, text: str, start: int) -> Iterator[tuple[str, Any]]:
    """The elements of the JSON array at ``text[start]``, each with the line it starts on."""
    decoder, n, i, index = json.JSONDecoder(), len(text), start + 1, 0
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg}): fix the file") from None
        index += 1
        yield f"{path}:{_line_of(text, i)} (record {index})", obj
        i = end
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ",":
            i += 1
        elif i >= n or text[i] != "]":
            raise InputError(f"{path}:{_line_of(text, min(i, n - 1))}: malformed JSON (expected ',' or ']' after record {index}): fix the file")


def _squad_records(path: Path, data: list) -> Iterator[tuple[str, Any]]:
    """SQuAD's nested JSON: ``data[].paragraphs[].qas[]``, each question with its paragraph as context."""
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            for q, qa in enumerate(para.get("qas", []) if isinstance(para, dict) else []):
                if isinstance(qa, dict):
                    qa = {**qa, "context": para.get("context"), "title": article.get("title", "")}
                yield f"{path}: data[{a}].paragraphs[{p}].qas[{q}]", qa


def _json_records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        yield from _json_array(path, text, start)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file
            yield from _jsonl_records(path, text)
            return
        raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg}): fix the file") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        rows = data["data"]
        if rows and isinstance(rows[0], dict) and "paragraphs" in rows[0]:
            yield from _squad_records(path, rows)
        else:
            yield from ((f"{path}: data[{i}]", r) for i, r in enumerate(rows))
        return
    yield f"{path}:1", data


def _answer_list(value: str) -> list[str] | str:
    """A CSV cell holding a JSON list of strings (``["a", "b"]``) as that list; any other text as is."""
    s = value.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            parsed = json.loads(s)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
            return parsed
    return value


def _csv_records(path: Path, text: str, delimiter: str, answer_names: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # a passage in a cell may exceed the default 128 KiB
    # strict: a quote left open would otherwise swallow every row after it into one cell
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    if not reader.fieldnames:
        raise InputError(f"{path}: no header row: the first line must name the columns (question, answer, ...)")
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:  # a quote left open, or one inside a cell that is not quoted as a whole
            raise InputError(f"{path}:{reader.line_num}: {e}: check that every quote in the cells is closed (a cell that holds a "
                             'quote is written "like ""this"""), or quote the whole cell') from None
        if None in row:
            raise InputError(f"{path}:{reader.line_num}: more cells than header columns: quote cells that hold '{delimiter}'")
        rec = {k: (None if v is None or v == "" else v) for k, v in row.items()}
        for name in answer_names:
            if isinstance(rec.get(name), str):
                rec[name] = _answer_list(rec[name])
        yield f"{path}:{reader.line_num}", rec


def _read_text(path: Path) -> str:
    """A QA file's text, decoded as UTF-8 (a leading byte-order mark dropped).

    Raises:
        InputError: the file is in another encoding (a spreadsheet's Latin-1 or Windows-1252 CSV):
            names the first bad byte, its line and the fix.
    """
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = data.count(b"\n", 0, at) + 1
        sheet = " (or save it as \"CSV UTF-8\" from the spreadsheet)" if path.suffix.lower() in (".csv", ".tsv") else ""
        raise InputError(f"QA file {path} is not UTF-8 (byte 0x{data[at]:02x} at line {line}, offset {at}): re-encode it as UTF-8, "
                         f"e.g. `iconv -f cp1252 -t utf-8 {path} > {path.with_name(path.stem + '-utf8' + path.suffix)}`{sheet}, "
                         "and pass that file") from None


def _table_records(path: Path, rows: Any) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows, 1):
        yield f"{path}: row {i}", row


def _dataset_rows(path: Path) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{path} is a folder but not a datasets folder saved with save_to_disk ({e}): pass a QA file ({FORMATS})") from None
    if isinstance(ds, DatasetDict):
        splits = ", ".join(f"{path / s}" for s in ds)
        raise InputError(f"{path} holds a DatasetDict with splits {', '.join(ds)}: pass one split's folder ({splits})")
    return iter(ds)


def read_records(path: Path, fields: QAFields) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a QA file or folder, in file order."""
    if path.is_dir():
        return _table_records(path, _dataset_rows(path))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, _read_text(path), "\t" if suffix == ".tsv" else ",", fields.names("answer"))
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"QA file {path} is not a readable Parquet file ({e}): pass the Parquet file itself, "
                             "or a .jsonl, .json or .csv file") from None
        return _table_records(path, table.to_pylist())
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise InputError(f"QA file {path} has an unknown type '{suffix}': use {FORMATS}")
    text = _read_text(path)
    return _json_records(path, text) if suffix == ".json" else _jsonl_records(path, text)


# ---------------------------------------------------------------------------------------------
# One record -> QAItem
# ---------------------------------------------------------------------------------------------


def _lookup(obj: dict, name: str) -> Any:
    """``obj[name]``, following dots into nested objects (``answers.text``); None when absent."""
    if name in obj:
        return obj[name]
    value: Any = obj
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _find(obj: dict, fields: QAFields, role: str) -> tuple[str, Any]:
    """(field name, value) of the first name for ``role`` present (not null) in ``obj``; ('', None) for none."""
    for name in fields.names(role):
        value = _lookup(obj, name)
        if value is not None:
            return name, value
    return "", None


def _answers(value: Any) -> list[str] | None:
    """Answer strings from a string, a list of strings, ``{"text": ...}`` or a list of those; None when not one of these."""
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for a in value:
            a = a.get("text") if isinstance(a, dict) else a
            if not isinstance(a, str):
                return None
            out.append(a)
        return out
    return None


def _answerable(obj: dict, where: str) -> bool:
    value = obj.get("answerable")
    if value is None and obj.get("is_impossible") is not None:  # SQuAD 2.0
        value = not _as_bool(obj["is_impossible"])
    if value is None:
        return True
    b = _as_bool(value)
    if b is None:
        raise InputError(f"{where}: 'answerable' must be true or false, got {value!r}")
    return b


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    return None


def _ident(obj: dict, fields: QAFields, role: str, where: str) -> str | None:
    name, value = _find(obj, fields, role)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: field '{name}' ({role}) must be a string or an integer, got {value!r}: fix it or name "
                         f"another field with {fields.flag(role)}")
    return str(value)


def parse_qa(obj: Any, where: str, fields: QAFields | None = None) -> QAItem:
    """One QA record; ``where`` (``file:line``) prefixes any error, which names the field."""
    fields = fields or QAFields()
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a QA record must be an object with a question and an answer, got {type(obj).__name__}")
    qname, question = _find(obj, fields, "question")
    if not isinstance(question, str):
        looked = " or ".join(f"'{n}'" for n in fields.names("question"))
        seen = f"a non-string '{qname}' ({question!r})" if qname else f"fields {', '.join(map(repr, list(obj)[:8]))}"
        raise InputError(f"{where}: missing or non-string 'question': looked for {looked}, found {seen}; every QA record "
                         f"needs one (name its field with --question-field)")
    aname, value = _find(obj, fields, "answer")
    answers = [] if value is None else _answers(value)
    if answers is None:
        raise InputError(f"{where}: field '{aname}' must be a string or a list of strings (or SQuAD's {{'text': [...]}}), got "
                         f"{value!r}: fix it or name the answer field with --answer-field")
    cname, context = _find(obj, fields, "context")
    if context is not None and not isinstance(context, str):
        raise InputError(f"{where}: field '{cname}' (context) must be a string, got {type(context).__name__}: fix it or name "
                         "the context field with --context-field")
    context = context if context and context.strip() else None
    key = question if context is None else f"{question}\x00{context}"
    qid = _ident(obj, fields, "id", where) or "q-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    title = obj.get("title") if isinstance(obj.get("title"), str) else ""
    given = obj.get("summary")
    if given is not None and not isinstance(given, str):
        raise InputError(f"{where}: field 'summary' must be a string (the record's summary of its passage), got {type(given).__name__}")
    extract = obj.get("extract")
    if extract is not None and not isinstance(extract, dict):
        raise InputError(f"{where}: field 'extract' must be a JSON object (the record's own JSON answer about its passage, "
                         f'e.g. {{"date": "1998"}}), got {type(extract).__name__}')
    return QAItem(qid, question, [a for a in answers if a.strip()], _ident(obj, fields, "doc_id", where), _answerable(obj, where),
                  where, context, title, given.strip() if given and given.strip() else None, extract)


def load_qa(path: str | Path, fields: QAFields | None = None) -> list[QAItem]:
    """All QA items of a file or datasets folder; malformed records name the file, line or row, and field.

    Raises:
        InputError: a missing or unreadable file, a bad record, or no record at all.
    """
    path = Path(path)
    fields = fields or QAFields()
    if not path.exists():
        raise InputError(f"QA file {path} does not exist: pass a QA file ({FORMATS}) with a question and an answer per record")
    items = [parse_qa(obj, where, fields) for where, obj in read_records(path, fields)]
    if not items:
        raise InputError(f"QA file {path} holds no questions: add records with a question and an answer")
    return items


def unique_questions(items: list[QAItem]) -> list[QAItem]:
    """The items with exact repeats counted once (warned); blank questions and reused ids are errors.

    Raises:
        InputError: a blank question, or one id used for two different records (each with its file:line).
    """
    blank = [it for it in items if not it.question.strip()]
    if blank:
        raise InputError(f"{blank[0].where}: blank question ({len(blank)} in all): write the question or remove the line")
    first: dict[str, QAItem] = {}
    out = []
    for it in items:
        seen = first.setdefault(it.id, it)
        if seen is it:
            out.append(it)
        elif seen != it:
            raise InputError(f"{it.where}: id {it.id} is already used at {seen.where} for a different question or answer: "
                             "give each question its own id (ids default to a hash of the question text)")
    if len(out) < len(items):
        log.warning("%d repeated question lines (same id, question and answers) were counted once", len(items) - len(out))
    return out


def field_names(path: str | Path, fields: QAFields | None = None) -> list[str]:
    """The field (column) names the records of a QA file hold, in order of first appearance."""
    seen: dict[str, None] = {}
    for _, obj in read_records(Path(path), fields or QAFields()):
        if isinstance(obj, dict):
            seen.update(dict.fromkeys(str(k) for k in obj))
    return list(seen)


def require_answers(path: str | Path, items: list[QAItem], fields: QAFields | None = None, purpose: str = "evaluated") -> None:
    """Fail when a QA file has answerable records and not one answer: no answer column (or an empty one).

    Without this, every record would count as answerable with no gold answer, and scores (or
    skips) would be silently wrong. Files whose records are all ``answerable: false`` pass.

    Raises:
        InputError: naming the file, the column looked for, the columns seen and ``--answer-field``.
    """
    if any(it.answers for it in items) or not any(it.answerable for it in items):
        return
    fields = fields or QAFields()
    names = fields.names("answer")
    seen = field_names(path, fields)
    shown = ", ".join(seen[:12]) + (f", ... {len(seen) - 12} more" if len(seen) > 12 else "") or "none"
    present = [n for n in names if n.split(".")[0] in seen]
    if present:
        raise InputError(f"QA file {path}: the answer column '{present[0]}' is empty in all {sum(it.answerable for it in items)} "
                         f"answerable records (columns seen: {shown}), so they cannot be {purpose}: fill in the answers, mark "
                         "unanswerable records answerable: false, or name the answer column with --answer-field")
    looked = " or ".join(f"'{n}'" for n in names)
    raise InputError(f"QA file {path} has no answer column (looked for {looked}; columns seen: {shown}), so its questions cannot "
                     f"be {purpose}: add an answer column, or name it with --answer-field")
