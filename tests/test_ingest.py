"""Ingestion: formats, whitespace, chunk windows and ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_pipeline.index.embed import HashingEmbedder
from rag_pipeline.errors import InputError
from rag_pipeline.index.ingest import Document, IngestReport, chunk_document, normalize_whitespace, read_documents


def test_normalize_whitespace() -> None:
    assert normalize_whitespace("  a \t b\r\n\n\n\nc\u00a0 d  ") == "a b\n\nc d"


def test_reads_each_format(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Plain   text.")
    (tmp_path / "b.md").write_text("# Title\n\nMarkdown body.")
    (tmp_path / "c.html").write_text("<html><head><title>Page</title><style>p{}</style></head><body><p>Visible</p><script>hidden()</script></body></html>")
    (tmp_path / "d.json").write_text('[{"id": "x", "title": "X", "text": "json text"}]')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "e.jsonl").write_text('{"doc": "y", "name": "Y", "body": "jsonl text"}\n')
    (tmp_path / "skip.csv").write_text("a,b")
    report = IngestReport()
    docs = list(read_documents([tmp_path / n for n in ("a.txt", "b.md", "c.html", "d.json")], report))
    by_text = {d.text: d for d in docs}
    assert "Plain text." in by_text and by_text["Visible"].title == "Page" and "hidden" not in "".join(by_text)
    assert by_text["json text"].id == "x" and by_text["json text"].title == "X"
    assert report.files == 4
    assert [d.text for d in read_documents([tmp_path / "skip.csv"], IngestReport())] == []  # unsupported type
    # jsonl with other field names: configurable
    docs = list(read_documents([tmp_path / "other" / "e.jsonl"], IngestReport(), id_field="doc", title_field="name", text_field="body"))
    assert (docs[0].id, docs[0].title, docs[0].text) == ("y", "Y", "jsonl text")
    with pytest.raises(InputError, match="e.jsonl:1: record has no 'text' field"):
        list(read_documents([tmp_path / "other" / "e.jsonl"], IngestReport()))


def test_qa_file_passages_are_read_from_context(tmp_path: Path) -> None:
    qa = tmp_path / "data.json"
    qa.write_text('[{"context": "Kuala Lumpur is the capital.", "question": "Capital?", "answer": "Kuala Lumpur is."},\n'
                  ' {"passage": "Ipoh lies on the Kinta.", "question": "River?", "answer": "The Kinta."}]')
    assert [d.text for d in read_documents([qa], IngestReport())] == ["Kuala Lumpur is the capital.", "Ipoh lies on the Kinta."]
    # A named --text-field is the only field read.
    with pytest.raises(InputError, match=r"data.json:1: record has no 'body' field: add it"):
        list(read_documents([qa], IngestReport(), text_field="body"))
    # "text" wins over "context" when a record has both.
    (tmp_path / "both.jsonl").write_text('{"text": "from text", "context": "from context"}\n')
    assert [d.text for d in read_documents([tmp_path / "both.jsonl"], IngestReport())] == ["from text"]


def test_pdf_text_layer(tmp_path: Path) -> None:
    import pypdf
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = pypdf.PdfWriter()
    page = writer.add_blank_page(300, 200)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"), NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf 20 100 Td (Glaciers carve valleys) Tj ET")
    page[NameObject("/Contents")] = writer._add_object(stream)
    with (tmp_path / "doc.pdf").open("wb") as f:
        writer.write(f)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    report = IngestReport()
    docs = list(read_documents([tmp_path], report))
    assert [d.text for d in docs] == ["Glaciers carve valleys"]
    assert [Path(p).name for p, _ in report.skipped] == ["broken.pdf"]


def test_a_pdf_pypdf_cannot_decrypt_is_skipped_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pypdf raises DependencyError (not a PdfReadError) for an AES-encrypted PDF without the cryptography package,
    and KeyError or its ParseError for some damaged ones: one such file stopped the whole build with a traceback."""
    import pypdf
    from pypdf.errors import DependencyError

    (tmp_path / "locked.pdf").write_bytes(b"%PDF-1.7 encrypted")
    (tmp_path / "notes.txt").write_text("Moraines mark the ice.")
    monkeypatch.setattr(pypdf, "PdfReader", lambda path: (_ for _ in ()).throw(DependencyError("cryptography is required for AES")))
    report = IngestReport()
    assert [d.text for d in read_documents([tmp_path], report)] == ["Moraines mark the ice."]
    assert report.skipped == [(str(tmp_path / "locked.pdf"), "unreadable PDF (DependencyError: cryptography is required for AES): "
                                                            "pip install cryptography to read encrypted PDFs")]


def test_a_symlinked_folder_is_read_and_a_link_back_up_is_no_loop(tmp_path: Path) -> None:
    """rglob skipped corpus/papers -> /data/papers without a word; a loop (ln -s .. back) must not repeat anything."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "paper.md").write_text("Ice sheets flow.")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "own.md").write_text("Own notes.")
    (corpus / "papers").symlink_to(tmp_path / "data")
    (corpus / "loop").symlink_to(corpus)
    (tmp_path / "data" / "again").symlink_to(tmp_path / "data")  # a loop outside the root: data/again/again/... read once
    assert sorted(d.text for d in read_documents([corpus], IngestReport())) == ["Ice sheets flow.", "Own notes."]


def test_files_in_hidden_folders_are_not_documents(tmp_path: Path) -> None:
    """An Obsidian vault's .obsidian/app.json (settings, no text field) stopped the build with a --text-field error."""
    (tmp_path / ".obsidian").mkdir()
    (tmp_path / ".obsidian" / "app.json").write_text('{"theme": "dark"}')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "glaciers.md").write_text("Glaciers carve valleys.")
    report = IngestReport()
    assert [d.text for d in read_documents([tmp_path], report)] == ["Glaciers carve valleys."] and report.files == 1


def test_chunks_respect_size_overlap_and_word_boundaries() -> None:
    emb = HashingEmbedder(dim=16, max_tokens=64)
    words = [f"w{i}" for i in range(100)]
    doc = Document("d", "T", " ".join(words), "src")
    chunks = chunk_document(doc, emb.token_offsets, chunk_size=30, overlap=5)
    assert all(len(emb.token_offsets(c.text)) <= 30 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    toks = [c.text.split() for c in chunks]
    for a, b in zip(toks, toks[1:]):
        assert a[-5:] == b[:5]  # overlap of 5 tokens
    assert toks[0][0] == "w0" and toks[-1][-1] == "w99"
    assert len({c.id for c in chunks}) == len(chunks)
    again = chunk_document(doc, emb.token_offsets, chunk_size=30, overlap=5)
    assert [c.id for c in again] == [c.id for c in chunks]


def test_overlap_must_be_smaller_than_size() -> None:
    emb = HashingEmbedder()
    with pytest.raises(InputError, match="overlap"):
        chunk_document(Document("d", "", "a b c", "s"), emb.token_offsets, chunk_size=4, overlap=4)


def test_split_pieces_read_the_same_documents_as_whole_files(tmp_path: Path) -> None:
    """What Ray workers read (line ranges of a JSONL file, row-group ranges of a Parquet file) gives
    the documents, ids, order and skip reasons of reading each file whole."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rag_pipeline.index.ingest import iter_pieces, read_piece

    rows = [{"text": f"record {i} " + "é\u2028x " * (i % 5)} if i % 7 else {"text": None} for i in range(120)]
    for i, r in enumerate(rows):
        if i % 3:
            r["id"] = f"d{i}"
    (tmp_path / "a.jsonl").write_text("\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" * (1 + (i % 4 == 0)) for i, r in enumerate(rows)),
                                      encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet", row_group_size=9)

    def read(split: int) -> tuple[list[Document], IngestReport, int]:
        report, docs, pieces = IngestReport(), [], list(iter_pieces([tmp_path], split))
        for piece in pieces:
            docs += list(read_piece(piece, report))
        return docs, report, len(pieces)

    whole, report, n = read(0)
    assert n == 2 and len(whole) == 2 * (120 - len(range(0, 120, 7)))  # both files, every 7th record skipped
    assert whole == list(read_documents([tmp_path], IngestReport()))
    for split in (64, 500):
        docs, rep, pieces = read(split)
        assert pieces > 4 and docs == whole
        assert (rep.files, rep.documents, rep.skipped) == (report.files, report.documents, report.skipped)
