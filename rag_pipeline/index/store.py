"""The chunk store: one row per chunk, read by FAISS row or chunk id without loading all.

Rows are numbered 0..n-1 in the order of the FAISS index. Two layouts (see
:mod:`rag_pipeline.index.format`), one interface:

- :class:`ChunkStore`: ``chunks.sqlite``, embeddings kept beside the text (float32 blobs);
- :class:`ShardedChunkStore`: Parquet shards read a row group at a time, ``keys.sqlite`` for
  lookups by chunk or document id; embeddings in ``.npy`` shards read by row
  (:class:`ShardVectors`).

:func:`open_store` and :func:`open_vectors` pick by the manifest. Embeddings are kept so that
``build-index --update`` reuses them for unchanged chunks (:func:`vectors_by_id`), and so that
IVF-PQ candidates can be re-ranked by exact inner product.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import numpy as np

from rag_pipeline.errors import IndexError_, RagError, ResourceError
from rag_pipeline.index.format import KEYS_FILE, STORE_FILE, IndexManifest, layout, shard_files, shard_rows
from rag_pipeline.passage import StoredChunk

log = logging.getLogger(__name__)

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


_COLS = "row, id, doc_id, title, source, position, text"


def open_readonly(path: Path, table: str, what: str) -> sqlite3.Connection:
    """A read-only connection (loading never modifies the index directory), probed so corruption fails here.

    The URI is percent-encoded (``Path.as_uri``): a directory named with ``#``, ``?`` or ``%`` opens
    the file it names, not a truncated path.
    """
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    except sqlite3.DatabaseError as e:
        raise IndexError_(f"{what} {path} is corrupt ({e}): rebuild the index with --force") from None
    return conn


class ChunkStore:
    """Read access to ``chunks.sqlite``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise IndexError_(f"chunk store {path} is missing: rebuild the index with `rag-pipeline build-index`")
        self.conn = open_readonly(path, "chunks", "chunk store")

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


# ------------------------------------------------------------------------------------ sharded layout

SHARD_ROW_GROUP = 256  # rows per Parquet row group: reading one chunk decodes at most this many
KEYS_SCHEMA = """
CREATE TABLE keys (id TEXT PRIMARY KEY, row INTEGER NOT NULL, doc_id TEXT NOT NULL, position INTEGER NOT NULL) WITHOUT ROWID;
"""
KEYS_DOC_INDEX = "CREATE INDEX keys_doc ON keys(doc_id, position);"  # built after the inserts: faster than maintained


def chunk_schema():  # -> pyarrow.Schema
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()),
                      ("source", pa.string()), ("position", pa.int32()), ("text", pa.string())])


def write_shard(index_dir: Path, i: int, chunks: list[StoredChunk], vectors: np.ndarray) -> None:
    """Write shard ``i``: its chunks (Parquet, zstd, row groups of :data:`SHARD_ROW_GROUP`) and their
    float32 vectors (``.npy``), row-aligned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(chunks) != len(vectors):
        raise ValueError(f"shard {i}: {len(chunks)} chunks but {len(vectors)} vectors")
    cols = {name: [getattr(c, name) for c in chunks] for name in chunk_schema().names}
    parquet, npy = (Path(index_dir) / f for f in shard_files(i))
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=chunk_schema()), parquet, row_group_size=SHARD_ROW_GROUP, compression="zstd")
    np.save(npy, np.ascontiguousarray(vectors, dtype=np.float32))


def write_keys(index_dir: Path, rows_per_shard: list[int]) -> None:
    """Build ``keys.sqlite`` (chunk id -> row, document id -> rows) from the shards, one shard at a time."""
    import pyarrow.parquet as pq

    db = sqlite3.connect(Path(index_dir) / KEYS_FILE)
    try:
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + KEYS_SCHEMA)
        for i in range(len(rows_per_shard)):
            t = pq.read_table(Path(index_dir) / shard_files(i)[0], columns=["id", "row", "doc_id", "position"])
            db.executemany("INSERT INTO keys VALUES (?,?,?,?)", zip(*(t.column(c).to_pylist() for c in ("id", "row", "doc_id", "position"))))
        db.executescript(KEYS_DOC_INDEX)
        db.commit()
    finally:
        db.close()


OPEN_SHARDS = 64  # shard files kept open per store: far below the usual 1,024 file descriptors
FD_RESERVE = 256  # descriptors left to everything else when vector files may take more than OPEN_SHARDS


def file_budget(shards: int) -> int:
    """How many vector shards :class:`ShardVectors` keeps open (a descriptor each): every shard when
    the open-file limit leaves room for them beside the chunk store's files, else
    :data:`OPEN_SHARDS`. A re-ranked search touches rows of every shard, and an LRU smaller than the
    shard count misses on each of them every batch (reopened each time: at 10M vectors in 153
    shards, when they were memory-mapped, that made re-ranking 100 candidates cost 1-6 ms a query)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return OPEN_SHARDS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(OPEN_SHARDS, shards)
    return max(OPEN_SHARDS, min(shards, soft - OPEN_SHARDS - FD_RESERVE))


class _OpenFiles:
    """At most ``size`` open shard files by key, the least recently used closed first (thread-safe).

    ``pin``: once full, keep the files held and hand out others uncached (the caller drops them
    after use) instead of evicting: reads that sweep every shard in order, as a re-ranked batch
    does, would otherwise miss on every shard with an LRU smaller than the shard count.
    """

    def __init__(self, size: int, close: Callable[[object], None] = lambda f: None, pin: bool = False) -> None:
        self.size = size
        self._close = close
        self.pin = pin
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, open_: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            if self.pin and len(self._items) >= self.size:
                return open_()
            value = self._items[key] = open_()
            while len(self._items) > self.size:
                self._close(self._items.popitem(last=False)[1])
            return value

    def clear(self) -> None:
        with self._lock:
            while self._items:
                self._close(self._items.popitem(last=False)[1])


def _unreadable(what: str, path: Path, e: Exception) -> RagError:
    """The error for a shard file that cannot be opened: the system's limits are not corruption."""
    code = getattr(e, "errno", None)
    if code in (errno.EMFILE, errno.ENFILE):
        return ResourceError(f"{what} {path} cannot be opened: too many open files ({e}); raise the limit (e.g. `ulimit -n 4096`)")
    if code == errno.ENOMEM:
        return ResourceError(f"{what} {path} cannot be mapped: out of memory or map areas ({e}); free memory or raise vm.max_map_count")
    if code in (errno.EACCES, errno.EPERM):
        return ResourceError(f"{what} {path} cannot be read: permission denied; make the index directory readable by this user")
    return IndexError_(f"{what} {path} cannot be read ({e}): rebuild the index with --force")


class _Shards:
    """Row -> (shard, row within it) for shards of the given sizes."""

    def __init__(self, rows_per_shard: list[int]) -> None:
        self.rows = list(rows_per_shard)
        self.starts = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            bad = rows[(rows < 0) | (rows >= len(self))][:5].tolist()
            raise IndexError_(f"chunk store has no rows {bad}: the index and store disagree; rebuild with --force")
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return shard, rows - self.starts[shard]


class ShardedChunkStore:
    """Read access to the chunks of a sharded index: Parquet shards plus ``keys.sqlite``.

    A lookup reads only the row groups that hold the rows asked for (a small LRU cache keeps the
    last few decoded); nothing reads all chunks except :meth:`iter_chunks`, which streams them.
    At most :data:`OPEN_SHARDS` Parquet files are open at a time.
    """

    def __init__(self, index_dir: str | Path, rows_per_shard: list[int], cache_groups: int = 64) -> None:
        import pyarrow.parquet as pq

        self.dir = Path(index_dir)
        self.shards = _Shards(rows_per_shard)
        self._lock = threading.Lock()  # pyarrow file handles and the cache are shared by the server's threads
        self._files = _OpenFiles(OPEN_SHARDS, close=lambda entry: entry[0].close())  # shard -> (ParquetFile, row group starts)
        path = self.dir / KEYS_FILE
        if not path.is_file():
            raise IndexError_(f"chunk key index {path} is missing: rebuild the index with `rag-pipeline build-index --force`")
        self.conn = open_readonly(path, "keys", "chunk key index")
        self._read_group = functools.lru_cache(maxsize=cache_groups)(self._decode_group)
        self._pq = pq

    def __len__(self) -> int:
        return len(self.shards)

    def _open(self, shard: int):  # -> pyarrow.parquet.ParquetFile
        path = self.dir / shard_files(shard)[0]
        try:
            f = self._pq.ParquetFile(path)
        except (OSError, ValueError) as e:
            raise _unreadable("chunk shard", path, e) from None
        if f.metadata.num_rows != self.shards.rows[shard]:
            f.close()
            raise IndexError_(f"chunk shard {path} holds {f.metadata.num_rows} rows, the manifest says {self.shards.rows[shard]}: rebuild with --force")
        return f

    def _entry(self, shard: int) -> tuple[object, np.ndarray]:
        """Shard ``shard``'s open Parquet file and the first row of each of its row groups."""

        def open_() -> tuple[object, np.ndarray]:
            f = self._open(shard)
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
            return f, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

        return self._files.get(shard, open_)

    def _decode_group(self, shard: int, group: int) -> list[StoredChunk]:
        t = self._entry(shard)[0].read_row_group(group, columns=_COLS.split(", "))
        return [StoredChunk(*r) for r in zip(*(t.column(c).to_pylist() for c in t.column_names))]

    def get_rows(self, rows: list[int]) -> list[StoredChunk]:
        """Chunks for FAISS ids, in the order given; ids must exist."""
        if not len(rows):
            return []
        shard, local = self.shards.locate(np.asarray(rows))
        out = []
        with self._lock:
            for s, r in zip(shard.tolist(), local.tolist()):
                starts = self._entry(s)[1]
                g = int(np.searchsorted(starts, r, side="right") - 1)
                out.append(self._read_group(s, g)[r - int(starts[g])])
        return out

    def get(self, chunk_id: str) -> StoredChunk:
        r = self.conn.execute("SELECT row FROM keys WHERE id = ?", (chunk_id,)).fetchone()
        if r is None:
            raise KeyError(chunk_id)
        return self.get_rows([r[0]])[0]

    def chunks_of_docs(self, doc_ids: set[str] | list[str]) -> dict[str, list[StoredChunk]]:
        """Chunks of each document, ordered by position (900 ids per key query)."""
        ids, rows = sorted(set(doc_ids)), []
        for i in range(0, len(ids), 900):  # SQLite's parameter limit
            part = ids[i : i + 900]
            q = f"SELECT row FROM keys WHERE doc_id IN ({','.join('?' * len(part))}) ORDER BY doc_id, position"
            rows += [r for (r,) in self.conn.execute(q, part)]
        out: dict[str, list[StoredChunk]] = {}
        for c in self.get_rows(rows):
            out.setdefault(c.doc_id, []).append(c)
        return out

    def iter_chunks(self, batch: int = 1024) -> Iterator[StoredChunk]:
        """All chunks in row order, a shard's row groups at a time (bounded memory; each shard's file
        is opened for the pass and closed, outside the lookups' cache)."""
        for s in range(len(self.shards.rows)):
            with self._open(s) as f:
                for b in f.iter_batches(batch_size=batch, columns=_COLS.split(", ")):
                    yield from (StoredChunk(*r) for r in zip(*(b.column(c).to_pylist() for c in b.schema.names)))

    def close(self) -> None:
        self.conn.close()
        self._files.clear()
        self._read_group.cache_clear()


class _VectorFile:
    """One vector shard's ``.npy``, read by row with ``os.pread``: the rows read stay in the OS page
    cache, not in this process's resident memory (a memory map's touched pages count there: at 1M
    vectors, re-ranking 1,000 candidates a query for 200 queries kept ~300 MB resident)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.fd = -1
        try:
            with path.open("rb") as f:
                major, _ = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
                self.offset = f.tell()
            self.fd = os.open(path, os.O_RDONLY)
        except (OSError, ValueError) as e:
            raise _unreadable("vector shard", path, e) from None
        if shape != (rows, dim) or dtype != np.float32 or fortran:
            self.close()
            raise IndexError_(f"vector shard {path} is {dtype}{shape}, expected float32({rows}, {dim}): rebuild with --force")
        self.path, self.rows, self.dim = path, rows, dim

    def read(self, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (in that order), shape (len(local), dim); consecutive rows are read in one call."""
        size = 4 * self.dim
        order = np.argsort(local, kind="stable")
        first = local[order]
        begin = np.insert(np.flatnonzero(np.diff(first) != 1) + 1, 0, 0)  # runs of consecutive rows
        counts = np.diff(np.append(begin, len(first)))
        data = b"".join([os.pread(self.fd, n * size, self.offset + a * size) for a, n in zip(first[begin].tolist(), counts.tolist())])
        if len(data) != len(first) * size:
            raise IndexError_(f"vector shard {self.path} is truncated: rebuild with --force")
        out = np.empty((len(local), self.dim), np.float32)
        out[order] = np.frombuffer(data, np.float32).reshape(len(local), self.dim)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class ShardVectors:
    """The embeddings of a sharded index: one float32 ``.npy`` per shard, read by row with
    ``os.pread`` (at most :func:`file_budget` files kept open, decided at the first read, the first
    ones read staying open; the others are opened for one read)."""

    def __init__(self, index_dir: str | Path, rows_per_shard: list[int], dim: int) -> None:
        self.dir = Path(index_dir)
        self.shards = _Shards(rows_per_shard)
        self.dim = dim
        self._files = _OpenFiles(0, close=lambda f: f.close(), pin=True)  # one dropped from here is closed once no read uses it

    def __len__(self) -> int:
        return len(self.shards)

    def _file(self, i: int) -> _VectorFile:
        """Shard ``i``'s file, kept open if it is among the first :func:`file_budget` shards read."""
        if not self._files.size:
            self._files.size = file_budget(len(self.shards.rows))
            if self._files.size < len(self.shards.rows):
                log.warning("%d vector shards, but the open-file limit leaves room to keep %d open: the others are opened for "
                            "each read (slower re-ranking); raise it (ulimit -n %d) or build with a larger --shard-size",
                            len(self.shards.rows), self._files.size, len(self.shards.rows) + OPEN_SHARDS + FD_RESERVE)
        return self._files.get(i, lambda: self._open_file(i))

    def _open_file(self, i: int) -> _VectorFile:
        return _VectorFile(self.dir / shard_files(i)[1], self.shards.rows[i], self.dim)

    def get_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given rows, shape (len(rows), dim), in that order (only those rows are read;
        none stays in this process's memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if not len(rows):
            return out
        shard, local = self.shards.locate(rows)
        order = np.argsort(shard, kind="stable")  # the rows of each shard together, found once (not a mask per shard)
        for sel in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1):
            out[sel] = self._file(int(shard[sel[0]])).read(local[sel])
        return out

    def iter_shards(self, rows: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) per shard in row order, or per ``rows``-row slice of each shard, each read
        in one call when it is asked for (memory: one shard or slice, never the corpus)."""
        for i, n in enumerate(self.shards.rows):
            f, first, step = self._open_file(i), int(self.shards.starts[i]), rows or max(1, n)
            for a in range(0, n, step):
                yield first + a, f.read(np.arange(a, min(n, a + step)))
            f.close()

    def close(self) -> None:
        self._files.clear()


class SqliteVectors:
    """The embeddings of a format-1 index, read from ``chunks.sqlite`` by row."""

    def __init__(self, conn: sqlite3.Connection, dim: int) -> None:
        self.conn = conn
        self.dim = dim

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def get_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = [int(r) for r in rows]
        found: dict[int, bytes] = {}
        for i in range(0, len(rows), 900):  # SQLite's parameter limit
            part = rows[i : i + 900]
            found.update(self.conn.execute(f"SELECT row, embedding FROM chunks WHERE row IN ({','.join('?' * len(part))})", part))
        missing = [r for r in rows if found.get(r) is None]
        if missing:
            raise IndexError_(f"chunk store has no embedding for rows {missing[:5]}: rebuild with --force")
        return np.frombuffer(b"".join(found[r] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)

    def iter_shards(self, rows: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        n = len(self)
        for a in range(0, n, rows):
            yield a, self.get_rows(np.arange(a, min(n, a + rows)))


def open_store(index_dir: str | Path, manifest: IndexManifest) -> ChunkStore | ShardedChunkStore:
    """The chunk store of an index directory, for its layout."""
    if layout(manifest) == "sharded":
        return ShardedChunkStore(index_dir, shard_rows(manifest))
    return ChunkStore(Path(index_dir) / STORE_FILE)


def open_vectors(index_dir: str | Path, manifest: IndexManifest, store: ChunkStore | ShardedChunkStore | None = None) -> ShardVectors | SqliteVectors:
    """The stored embeddings of an index directory (``.npy`` shards read by row, or the SQLite store's column)."""
    dim = int(manifest["embedder"]["dim"])
    if layout(manifest) == "sharded":
        return ShardVectors(index_dir, shard_rows(manifest), dim)
    store = store if isinstance(store, ChunkStore) else ChunkStore(Path(index_dir) / STORE_FILE)
    return SqliteVectors(store.conn, dim)


def vectors_by_id(index_dir: str | Path, manifest: IndexManifest) -> tuple[Callable[[list[str]], dict[str, np.ndarray]], Callable[[], None]]:
    """A lookup of stored embeddings by chunk id (for ``build-index --update``) and its close function."""
    index_dir = Path(index_dir)
    if layout(manifest) == "sharded":
        keys = open_readonly(index_dir / KEYS_FILE, "keys", "chunk key index")
        vectors = ShardVectors(index_dir, shard_rows(manifest), int(manifest["embedder"]["dim"]))

        def lookup(ids: list[str]) -> dict[str, np.ndarray]:
            found: list[tuple[str, int]] = []
            for i in range(0, len(ids), 900):
                part = ids[i : i + 900]
                found += keys.execute(f"SELECT id, row FROM keys WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
            vecs = vectors.get_rows(np.array([r for _, r in found], dtype=np.int64))
            return {cid: v for (cid, _), v in zip(found, vecs)}

        return lookup, keys.close
    db = open_readonly(index_dir / STORE_FILE, "chunks", "chunk store")

    def lookup_sqlite(ids: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(ids), 900):
            part = ids[i : i + 900]
            for cid, blob in db.execute(f"SELECT id, embedding FROM chunks WHERE id IN ({','.join('?' * len(part))})", part):
                if blob is not None:
                    out[cid] = np.frombuffer(blob, dtype=np.float32)
        return out

    return lookup_sqlite, db.close
