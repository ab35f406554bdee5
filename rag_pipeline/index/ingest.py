"""Ingestion: files and folders -> documents -> token-sized chunks with stable ids.

Documents are streamed one at a time (never the whole corpus in memory). Unreadable, binary,
non-UTF-8 and empty files are skipped with a one-line reason each and counted in
:class:`IngestReport`; a malformed JSONL line names the file and the line number.

Reading is split into :class:`Piece` s (a whole file, a range of lines of a large JSONL file, a
range of row groups of a large Parquet file) so that workers can read one corpus in parallel
(``build-index --engine ray``); :func:`read_documents` reads the pieces of whole files in order,
and the pieces of a split file yield the same documents, in the same order, as the whole file.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag_pipeline.errors import InputError
from rag_pipeline.passage import Chunk

log = logging.getLogger(__name__)

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".json", ".parquet", ".pdf")


@dataclass(frozen=True)
class Document:
    """One source document: ``id`` is stable (given, or derived from the source path)."""

    id: str
    title: str
    text: str
    source: str


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

    def merge(self, other: IngestReport) -> None:
        """Add what another reader of other pieces counted (a worker's report, in piece order)."""
        self.files += other.files
        self.documents += other.documents
        self.skipped += other.skipped
        self.repeated_ids += other.repeated_ids

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
        for f in sorted(_files_under(p)):
            if f.suffix.lower() in SUPPORTED:
                yield f, f"{root}/{f.relative_to(p).as_posix()}" if root else f.relative_to(p).as_posix()


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file below ``folder`` but hidden ones and those under hidden folders (``.git``, ``.obsidian``: tools'
    files, not documents), through symlinked folders that lead outside it (``rglob`` skips them before Python 3.13).
    A link to a folder inside it (``latest -> v2``) is not followed, and no real folder is walked twice (a link back
    up, inside or outside): each file is read once, under its own path."""
    root = os.path.realpath(folder)
    walked = {root}
    for top, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            path = Path(top, d)
            real = os.path.realpath(path)
            if d.startswith(".") or real in walked or (path.is_symlink() and Path(real).is_relative_to(root)):
                continue
            walked.add(real)
            keep.append(d)
        dirs[:] = keep
        for name in files:
            f = Path(top, name)
            if not name.startswith(".") and f.is_file():
                yield f


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
    except Exception as e:  # pypdf's other errors on damaged or encrypted files (DependencyError, ParseError, KeyError ...)
        hint = ": pip install cryptography to read encrypted PDFs" if type(e).__name__ == "DependencyError" else ""
        raise ValueError(f"unreadable PDF ({type(e).__name__}: {e}){hint}") from None


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
                  report: IngestReport, first_line: int = 1) -> Iterator[Document]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON at line {e.lineno} ({e.msg}): fix the file") from None
        records = data if isinstance(data, list) else [data]
        lines = [(i + 1, r) for i, r in enumerate(records)]
    else:
        lines = []
        # "\n" only, as JSON Lines defines: str.splitlines() would also cut at U+2028 or U+0085,
        # which JSON strings may hold raw.
        for lineno, line in enumerate(raw.split("\n"), first_line):
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
        doc = _record_document(path, name, lineno, rec.get(id_field), rec.get(title_field), rec[field], field, id_field, report)
        if doc is not None:
            yield doc


def _record_document(path: Path, name: str, number: int, given: object, title: object, text: object, field: str,
                     id_field: str, report: IngestReport) -> Document | None:
    """The document of one JSON record or Parquet row (number: its 1-based line or row); None when skipped."""
    problem = _text_problem(text, field) or _id_problem(given, id_field)
    if problem:
        report.skip(f"{path}:{number}", problem)
        return None
    doc_id = str(given) if given not in (None, "") else f"{_doc_id_for(name)}-{number}"
    title = title if isinstance(title, str) else str(title) if isinstance(title, (int, float)) else ""  # no reprs
    return Document(doc_id, title, normalize_whitespace(text), name)


def _parquet_records(path: Path, name: str, piece: Piece, id_field: str, title_field: str, text_field: str,
                     report: IngestReport) -> Iterator[Document]:
    """Rows of a Parquet file's row groups ``[piece.start, piece.stop)``, one row group at a time.

    The text column is chosen as for JSON records (``text_field``, or with the default one the first
    of :data:`TEXT_FIELDS` present); a row's number (for derived ids and skip reasons) is its 1-based
    position in the file.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    field = _text_field_of(dict.fromkeys(names), text_field)
    if field is None:
        also = f" (nor {', '.join(repr(f) for f in TEXT_FIELDS[1:])})" if text_field == TEXT_FIELDS[0] else ""
        raise InputError(f"{path}: Parquet file has no '{text_field}' column{also}: add it, or name the text column with --text-field")
    cols = [c for c in dict.fromkeys((id_field, title_field, field)) if c in names]
    stop = pf.num_row_groups if piece.stop < 0 else piece.stop
    number = piece.first_line
    for g in range(piece.start, stop):
        table = pf.read_row_group(g, columns=cols)
        data = {c: table.column(c).to_pylist() for c in cols}
        for i in range(table.num_rows):
            doc = _record_document(path, name, number, data[id_field][i] if id_field in data else None,
                                   data[title_field][i] if title_field in data else None, data[field][i], field, id_field, report)
            number += 1
            if doc is not None:
                yield doc


@dataclass(frozen=True)
class Piece:
    """What one worker reads: a whole file, or part of a large JSONL or Parquet file.

    Attributes:
        start, stop: JSONL: byte range (cut after a newline); Parquet: row-group range; stop -1: to the end.
        first_line: the 1-based line (JSONL) or row (Parquet) number at ``start``.
        first: the file's first piece (the file is counted once, by it).
        skip: a reason found while splitting (unreadable, binary, non-UTF-8): the file is skipped.
    """

    path: str
    name: str
    start: int = 0
    stop: int = -1
    first_line: int = 1
    first: bool = True
    skip: str = ""

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop < 0


def iter_pieces(paths: list[str | Path], split_bytes: int = 0) -> Iterator[Piece]:
    """The pieces of every input file, in :func:`iter_files` order.

    ``split_bytes`` > 0 splits JSONL files larger than that into line ranges of about that many bytes
    and Parquet files into row-group ranges; 0 keeps every file whole (what :func:`read_documents` reads).

    Raises:
        InputError: a path does not exist.
    """
    for path, name in iter_files(paths):
        suffix = path.suffix.lower()
        big = split_bytes > 0 and suffix in (".jsonl", ".parquet") and _size(path) > split_bytes
        if not big:
            yield Piece(str(path), name)
        elif suffix == ".jsonl":
            yield from _jsonl_pieces(path, name, split_bytes)
        else:
            yield from _parquet_pieces(path, name, split_bytes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # read as a whole piece, where the error is reported as for any unreadable file


def _jsonl_pieces(path: Path, name: str, split_bytes: int) -> Iterator[Piece]:
    """Line ranges of a large JSONL file, checked on the way as :func:`_read_text` checks a whole file
    (NUL bytes in the first 8 KiB, UTF-8 throughout), so that a bad file is skipped whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    ranges: list[tuple[int, int, int]] = []  # (start byte, stop byte, line number at start)
    start, start_line, offset, line = 0, 1, 0, 1  # line: the line number at byte `offset`
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                if offset == 0 and b"\x00" in block[:8192]:
                    yield Piece(str(path), name, skip="binary: contains NUL bytes")
                    return
                decoder.decode(block)
                pos = 0  # the newlines before `pos` are counted in `line`
                while start + split_bytes - offset < len(block):
                    cut = block.find(b"\n", max(start + split_bytes - offset, pos))
                    if cut < 0:
                        break
                    line += block.count(b"\n", pos, cut + 1)
                    pos = cut + 1
                    ranges.append((start, offset + pos, start_line))
                    start, start_line = offset + pos, line
                line += block.count(b"\n", pos)
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        yield Piece(str(path), name, skip=f"non-UTF-8: invalid byte at offset {offset + e.start}; re-encode the file as UTF-8")
        return
    except OSError as e:
        yield Piece(str(path), name, skip=f"unreadable: {e.strerror}")
        return
    if start < offset:
        ranges.append((start, -1, start_line))
    for i, (a, b, first_line) in enumerate(ranges):
        yield Piece(str(path), name, a, b, first_line, first=i == 0)


def _parquet_pieces(path: Path, name: str, split_bytes: int) -> Iterator[Piece]:
    """Row-group ranges of a large Parquet file, each of about ``split_bytes`` (at least one group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as e:
        yield Piece(str(path), name, skip=f"unreadable Parquet: {e}")
        return
    start, rows, size, first = 0, 1, 0, True
    for g in range(meta.num_row_groups):
        size += meta.row_group(g).total_byte_size
        if size >= split_bytes or g == meta.num_row_groups - 1:
            yield Piece(str(path), name, start, g + 1, rows, first=first)
            rows += sum(meta.row_group(i).num_rows for i in range(start, g + 1))
            start, size, first = g + 1, 0, False
    if meta.num_row_groups == 0:
        yield Piece(str(path), name)


def read_piece(piece: Piece, report: IngestReport, id_field: str = "id", title_field: str = "title",
               text_field: str = "text") -> Iterator[Document]:
    """Stream the documents of one piece; what is skipped (and the file, by its first piece) is counted in ``report``.

    Repeated document ids are not detected here: that needs every piece (see :func:`read_documents`).
    """
    path = Path(piece.path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        report.skip(path, f"unsupported type: '{suffix}' (supported: {', '.join(SUPPORTED)})")
        return
    report.files += piece.first
    if piece.skip:
        report.skip(path, piece.skip)
        return
    if suffix == ".parquet":
        try:
            yield from _counted(_parquet_records(path, piece.name, piece, id_field, title_field, text_field, report), report)
        except OSError as e:
            report.skip(path, f"unreadable: {e.strerror}")
        except Exception as e:  # pyarrow's errors (ArrowInvalid: not a Parquet file) share no base class with OSError
            if type(e).__module__.startswith("pyarrow"):
                report.skip(path, f"unreadable Parquet: {e}")
            else:
                raise
        return
    try:
        if suffix == ".pdf":
            raw = _pdf_text(path)
        elif piece.whole:
            raw = _read_text(path)
        else:
            raw = _read_range(path, piece.start, piece.stop)
    except (ValueError, OSError) as e:
        report.skip(path, str(e) if isinstance(e, ValueError) else f"unreadable: {e.strerror}")
        return
    if not raw.strip():
        if piece.whole:
            report.skip(path, "empty: no text")
        return
    if suffix in (".jsonl", ".json"):
        docs = list(_json_records(path, piece.name, raw, id_field, title_field, text_field, report, piece.first_line))
    else:
        title = path.stem
        if suffix in (".html", ".htm"):
            html_title, raw = _html_text(raw)
            title = html_title or title
        docs = [Document(_doc_id_for(piece.name), title, normalize_whitespace(raw), piece.name)]
    yield from _counted(docs, report)


def _counted(docs, report: IngestReport) -> Iterator[Document]:
    for doc in docs:
        if doc.text:
            report.documents += 1
            yield doc


def _read_range(path: Path, start: int, stop: int) -> str:
    """Bytes ``[start, stop)`` of a file (already checked as UTF-8 by :func:`_jsonl_pieces`) as text."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read() if stop < 0 else f.read(stop - start)
    return data.decode("utf-8-sig" if start == 0 else "utf-8")


def read_documents(
    paths: list[str | Path],
    report: IngestReport,
    id_field: str = "id",
    title_field: str = "title",
    text_field: str = "text",
) -> Iterator[Document]:
    """Stream documents from files and folders; skips and repeated document ids are recorded in ``report``."""
    seen: dict[str, str] = {}  # document id -> where it was first read
    for piece in iter_pieces(paths):
        for doc in read_piece(piece, report, id_field, title_field, text_field):
            _note_repeat(doc, piece.path, seen, report)
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
