"""The chunk store: SQLite, one row per chunk, read by FAISS row or chunk id without loading all.

Rows are numbered 0..n-1 in the order of the FAISS index. Embeddings are kept beside the text
(float32 blobs) so ``build-index --update`` reuses them for unchanged chunks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rag_pipeline.errors import IndexError_

SCHEMA = """
CREATE TABLE chunks (
    row INTEGER PRIMARY KEY,      -- FAISS id
    id TEXT NOT NULL UNIQUE,      -- content-derived chunk id
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB
);
CREATE INDEX chunks_doc ON chunks(doc_id);
"""


@dataclass(frozen=True)
class StoredChunk:
    row: int
    id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str


_COLS = "row, id, doc_id, title, source, position, text"


class ChunkStore:
    """Read access to ``chunks.sqlite``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise IndexError_(f"chunk store {path} is missing: rebuild the index with `rag-pipeline build-index`")
        # Read-only URI: loading never modifies the index directory.
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            self.conn.execute("SELECT count(*) FROM chunks").fetchone()
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"chunk store {path} is corrupt ({e}): rebuild the index with --force") from None

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def get_rows(self, rows: list[int]) -> list[StoredChunk]:
        """Chunks for FAISS ids, in the order given; ids must exist."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {r[0]: StoredChunk(*r) for r in self.conn.execute(f"SELECT {_COLS} FROM chunks WHERE row IN ({marks})", rows)}
        missing = [r for r in rows if r not in found]
        if missing:
            raise IndexError_(f"chunk store has no rows {missing[:5]}: the index and store disagree; rebuild with --force")
        return [found[r] for r in rows]

    def get(self, chunk_id: str) -> StoredChunk:
        r = self.conn.execute(f"SELECT {_COLS} FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        if r is None:
            raise KeyError(chunk_id)
        return StoredChunk(*r)

    def chunks_of_docs(self, doc_ids: set[str] | list[str]) -> dict[str, list[StoredChunk]]:
        """Chunks of each document, ordered by position (uses the doc_id index; 900 ids per query)."""
        ids, out = sorted(set(doc_ids)), {}
        for i in range(0, len(ids), 900):  # SQLite's parameter limit
            part = ids[i : i + 900]
            q = f"SELECT {_COLS} FROM chunks WHERE doc_id IN ({','.join('?' * len(part))}) ORDER BY doc_id, position"
            for r in self.conn.execute(q, part):
                out.setdefault(r[2], []).append(StoredChunk(*r))
        return out

    def iter_chunks(self, batch: int = 1024) -> Iterator[StoredChunk]:
        """All chunks in row order, fetched in batches (bounded memory)."""
        cur = self.conn.execute(f"SELECT {_COLS} FROM chunks ORDER BY row")
        while rows := cur.fetchmany(batch):
            yield from (StoredChunk(*r) for r in rows)

    def close(self) -> None:
        self.conn.close()
