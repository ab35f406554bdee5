"""Ingestion: files and folders -> documents -> token-sized chunks with stable ids.

Documents are streamed one at a time (never the whole corpus in memory). Unreadable, binary,
non-UTF-8 and empty files are skipped with a one-line reason each and counted in
:class:`IngestReport`; a malformed JSONL line names the file and the line number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag_pipeline.errors import InputError

log = logging.getLogger(__name__)

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".json", ".pdf")


@dataclass(frozen=True)
class Document:
    """One source document: ``id`` is stable (given, or derived from the source path)."""

    id: str
    title: str
    text: str
    source: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a document sized for the embedder; ``id`` derives from its text (and document)."""

    id: str
    doc_id: str
    title: str
    source: str
    position: int  # 0-based index of the chunk within its document
    text: str


@dataclass
class IngestReport:
    """What ingestion read and skipped; printed as a summary at the end of a build."""

    files: int = 0
    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    repeated_ids: int = 0  # documents whose id an earlier document already had (merged, warned)

    def skip(self, path: Path | str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append((str(path), reason))

    def summary(self) -> str:
        reasons = Counter(r.split(":")[0] for _, r in self.skipped)
        tail = f"; skipped {len(self.skipped)} ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})" if self.skipped else ""
        if self.repeated_ids:
            tail += f"; {self.repeated_ids} documents repeat an earlier document's id (merged)"
        return f"read {self.files} files, {self.documents} documents{tail}"


_WS = re.compile(r"[ \t\f\v\r\u00a0]+")
_NL = re.compile(r"\n\s*\n+")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces, keep paragraph breaks as one blank line, strip the ends."""
    text = text.replace("\r\n", "\n").replace("\x00", "")
    text = _NL.sub("\n\n", text)
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def iter_files(paths: list[str | Path]) -> Iterator[tuple[Path, str]]:
    """(file, name) for every supported file under ``paths``, in sorted order.

    ``name`` is the file's path relative to the folder given, prefixed by that folder's name
    (``notes/a/b.md``), or a file argument's own name: the same whether the folder is given by
    an absolute or a relative path, so document ids and ``source`` stay stable.

    Raises:
        InputError: a path does not exist.
    """
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"input path {p} does not exist: pass existing files or folders")
        if p.is_file():
            yield p, p.name
            continue
        root = p.resolve().name
        for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
            if f.suffix.lower() in SUPPORTED:
                yield f, f"{root}/{f.relative_to(p).as_posix()}" if root else f.relative_to(p).as_posix()


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError("binary: contains NUL bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"non-UTF-8: invalid byte at offset {e.start}; re-encode the file as UTF-8") from None


def _html_text(raw: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        if tag.name == "head":
            continue
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.head:
        soup.head.decompose()
    return title, soup.get_text("\n")


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    except (PdfReadError, ValueError, OSError) as e:
        raise ValueError(f"unreadable PDF: {e}") from None


def _doc_id_for(name: str) -> str:
    """A document id from the file's stable name (see :func:`iter_files`), not from how it was reached."""
    return "d-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def _text_problem(value: object, field: str) -> str | None:
    """Why a JSON record's text value cannot be indexed; None when it can (a string).

    A number is skipped too: it almost always means --text-field names the wrong column (a
    count, a score), and indexing its digits would make junk chunks; quote it if it really is
    the text.
    """
    if isinstance(value, str):
        return None
    return f"bad text: '{field}' is {_describe(value)}, not a string; make it a string or name the text field with --text-field"


def _id_problem(value: object, field: str) -> str | None:
    """Why a JSON record's id value cannot be used; None when it can (absent, a string or an integer)."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return f"bad id: '{field}' is {_describe(value)}, not a string or integer; fix it or name the id field with --id-field"


def _describe(value: object) -> str:
    """A JSON value's type in words, for skip reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else f"a {type(value).__name__}"


# With the default --text-field, a record without "text" is read from the first of the others it has
# (a QA file's passages: build-index data.json reads the same file build-raft-dataset reads).
TEXT_FIELDS = ("text", "context", "passage", "document", "content")


def _text_field_of(rec: object, text_field: str) -> str | None:
    """The field holding a JSON record's text: ``text_field``, or with the default one the first of
    :data:`TEXT_FIELDS` present; None when the record has none (or is not an object)."""
    if not isinstance(rec, dict):
        return None
    names = TEXT_FIELDS if text_field == TEXT_FIELDS[0] else (text_field,)
    return next((f for f in names if f in rec), None)


def _json_records(path: Path, name: str, raw: str, id_field: str, title_field: str, text_field: str,
                  report: IngestReport) -> Iterator[Document]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON at line {e.lineno} ({e.msg}): fix the file") from None
        records = data if isinstance(data, list) else [data]
        lines = [(i + 1, r) for i, r in enumerate(records)]
    else:
        lines = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSONL line ({e.msg}): fix or remove that line") from None
    for lineno, rec in lines:
        field = _text_field_of(rec, text_field)
        if field is None:
            also = f" (nor {', '.join(repr(f) for f in TEXT_FIELDS[1:])})" if text_field == TEXT_FIELDS[0] else ""
            raise InputError(
                f"{path}:{lineno}: record has no '{text_field}' field{also}: add it, or name the text field with --text-field"
            )
        given, title = rec.get(id_field), rec.get(title_field)
        problem = _text_problem(rec[field], field) or _id_problem(given, id_field)
        if problem:
            report.skip(f"{path}:{lineno}", problem)
            continue
        doc_id = str(given) if given not in (None, "") else f"{_doc_id_for(name)}-{lineno}"
        title = title if isinstance(title, str) else str(title) if isinstance(title, (int, float)) else ""  # no reprs
        yield Document(doc_id, title, normalize_whitespace(rec[field]), name)


def read_documents(
    paths: list[str | Path],
    report: IngestReport,
    id_field: str = "id",
    title_field: str = "title",
    text_field: str = "text",
) -> Iterator[Document]:
    """Stream documents from files and folders; skips and repeated document ids are recorded in ``report``."""
    seen: dict[str, str] = {}  # document id -> where it was first read
    for path, name in iter_files(paths):
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED:
            report.skip(path, f"unsupported type: '{suffix}' (supported: {', '.join(SUPPORTED)})")
            continue
        report.files += 1
        try:
            if suffix == ".pdf":
                raw = _pdf_text(path)
            else:
                raw = _read_text(path)
        except (ValueError, OSError) as e:
            report.skip(path, str(e) if isinstance(e, ValueError) else f"unreadable: {e.strerror}")
            continue
        if not raw.strip():
            report.skip(path, "empty: no text")
            continue
        if suffix in (".jsonl", ".json"):
            docs = list(_json_records(path, name, raw, id_field, title_field, text_field, report))
        else:
            title = path.stem
            if suffix in (".html", ".htm"):
                html_title, raw = _html_text(raw)
                title = html_title or title
            docs = [Document(_doc_id_for(name), title, normalize_whitespace(raw), name)]
        for doc in docs:
            if doc.text:
                report.documents += 1
                _note_repeat(doc, str(path), seen, report)
                yield doc


def _note_repeat(doc: Document, where: str, seen: dict[str, str], report: IngestReport) -> None:
    """Warn when a document id was already read: its chunks are then merged with the other document's."""
    if doc.id not in seen:
        seen[doc.id] = where
        return
    report.repeated_ids += 1
    log.warning("document id %r in %s was already used in %s: the two documents' chunks are merged under one id; "
                "give each document a unique id", doc.id, where, seen[doc.id])


def chunk_id(doc_id: str, text: str) -> str:
    """Stable content-derived id: the same text in the same document keeps its id across builds."""
    return "c-" + hashlib.sha256(f"{doc_id}\x00{text}".encode()).hexdigest()[:16]


def chunk_document(
    doc: Document,
    token_offsets: Callable[[str], list[tuple[int, int]]],
    chunk_size: int,
    overlap: int,
) -> list[Chunk]:
    """Split a document into windows of at most ``chunk_size`` embedder tokens, ``overlap`` shared.

    ``token_offsets(text)`` gives each token's (start, end) character span (special tokens
    excluded). Windows end on a word boundary when one exists inside the window, so that a
    re-tokenized chunk never exceeds ``chunk_size``.
    """
    if overlap >= chunk_size:
        raise InputError(f"chunk overlap {overlap} must be smaller than chunk size {chunk_size}")
    offsets = token_offsets(doc.text)
    if not offsets:
        return []
    chunks: list[Chunk] = []
    start = 0
    n = len(offsets)
    while start < n:
        end = min(start + chunk_size, n)
        if end < n:
            # Back off to the last token that starts a word (preceded by whitespace).
            cut = end
            while cut > start + 1 and not doc.text[offsets[cut][0] - 1 : offsets[cut][0]].isspace():
                cut -= 1
            if cut > start + chunk_size // 2:
                end = cut
        text = doc.text[offsets[start][0] : offsets[end - 1][1]].strip()
        if text:
            chunks.append(Chunk(chunk_id(doc.id, text), doc.id, doc.title, doc.source, len(chunks), text))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return chunks
