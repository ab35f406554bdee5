"""BM25 stored in the index directory: built by ``build-index``, queried on disk.

Hybrid search fuses the dense ranking with a BM25 ranking (:mod:`rag_pipeline.index.retriever`).
The BM25 side is part of the index, so that loading an index never reads the chunks' text:

- ``bm25/terms.sqlite``: ``terms`` (term -> id, document frequency) and ``postings`` ((term,
  segment) -> where its entries start in the two arrays below, and how many);
- ``bm25/rows.u32``: the local row (within its segment) of every posting, uint32;
- ``bm25/scores.f32``: its BM25 weight, float32, precomputed ("eager" scoring, as bm25s does).

A segment is a run of :data:`SEGMENT_ROWS` consecutive rows (in either layout); within a segment
the postings are grouped by term, so a query reads one contiguous slice per term and segment
(read with ``os.pread``: only those bytes are read, and they stay in the OS page cache rather than
the process's memory). The statistics (document frequencies,
average length) are the whole corpus's, so scores of different shards are comparable and equal
to those of one BM25 over every chunk.

Scoring and tokens are bm25s's defaults (the library the in-memory path used; the tests compare
against it): lower-cased ``\\b\\w\\w+\\b`` tokens without bm25s's English stop words, Lucene's
BM25 with k1 = 1.5 and b = 0.75. Building reads the text once, counting, and keeps each segment's
raw postings on scratch disk, then weighs one segment at a time: memory holds the vocabulary, the
chunks' lengths (4 bytes each) and one segment's postings, never the corpus.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rag_pipeline.errors import IndexError_
from rag_pipeline.index.format import BM25_DIR as DIR
from rag_pipeline.index.format import BM25_FILES as FILES
from rag_pipeline.index.format import BM25_ROWS as ROWS_FILE
from rag_pipeline.index.format import BM25_SCORES as SCORES_FILE
from rag_pipeline.index.format import BM25_TERMS as TERMS_FILE
K1, B = 1.5, 0.75
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)
# Chunks per segment. Weighing a segment peaks at about 50 bytes per posting (measured), so with ~60 distinct
# terms a chunk a segment takes ~400 MB; with the vocabulary, that is what building holds.
SEGMENT_ROWS = 1 << 17
TERMS_PER_QUERY = 500  # terms looked up per SQL statement (SQLite builds before 3.32 allow 999 parameters)
SCHEMA = """
CREATE TABLE terms (term TEXT PRIMARY KEY, id INTEGER NOT NULL, df INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE postings (term INTEGER NOT NULL, segment INTEGER NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
                       PRIMARY KEY (term, segment)) WITHOUT ROWID;
"""


# bm25s's English stop words (bm25s.stopwords.STOPWORDS_EN; a test keeps them equal), held here so that a
# query never imports bm25s (and scipy with it: 0.3 s and 20 MB on the first hybrid query).
STOPWORDS = frozenset(("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
                       "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with"))


def tokens(text: str) -> list[str]:
    """The BM25 terms of a text, in order, repeats kept: bm25s's default tokenizer (``stopwords="en"``)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def settings() -> dict:
    """What the scores depend on (part of the index's settings fingerprint: a change rebuilds)."""
    return {"method": "lucene", "k1": K1, "b": B, "token_pattern": TOKEN_PATTERN, "stopwords": "bm25s en", "version": 1}


def build(index_dir: Path, texts: Iterable[str], scratch: Path, segment_rows: int = SEGMENT_ROWS) -> dict:
    """Write the ``bm25/`` files of ``index_dir`` from every chunk's text in row order (read once).

    The first pass counts (term ids, document frequencies, lengths) and keeps each segment's raw
    postings in a file of ``scratch``; the second weighs them with the whole corpus's statistics.
    Returns the manifest's ``bm25`` section.
    """
    terms: dict[str, int] = {}
    df = array("q")
    lengths: list[np.ndarray] = []
    scratch.mkdir(parents=True, exist_ok=True)
    term_ids, rows, tfs, lens = array("I"), array("I"), array("f"), array("I")

    def flush() -> None:
        np.savez(scratch / f"bm25-{len(lengths):05d}.npz", term=np.array(term_ids, np.uint32), row=np.array(rows, np.uint32),
                 tf=np.array(tfs, np.float32))
        lengths.append(np.array(lens, np.float32))
        for a in (term_ids, rows, tfs, lens):
            del a[:]

    for text in texts:  # pass 1: term ids, document frequencies, lengths; raw postings to scratch
        if len(lens) == segment_rows:
            flush()
        counts = Counter(tokens(text))
        r = len(lens)
        lens.append(sum(counts.values()))
        for t, c in counts.items():
            i = terms.get(t)
            if i is None:
                i = terms[t] = len(terms)
                df.append(0)
            df[i] += 1
            term_ids.append(i)
            rows.append(r)
            tfs.append(c)
    if lens or not lengths:
        flush()
    n = sum(len(x) for x in lengths)
    total = float(sum(x.sum(dtype=np.float64) for x in lengths))
    avgdl = total / n if n and total else 1.0
    dfs = np.array(df, np.float64)
    idf = np.log(1.0 + (n - dfs + 0.5) / (dfs + 0.5))
    (index_dir / DIR).mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(index_dir / TERMS_FILE)
    postings = 0
    try:
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        db.executemany("INSERT INTO terms VALUES (?,?,?)", ((t, i, df[i]) for t, i in terms.items()))
        with (index_dir / ROWS_FILE).open("wb") as f_rows, (index_dir / SCORES_FILE).open("wb") as f_scores:
            for s, dl in enumerate(lengths):  # pass 2: weights, grouped by term, appended to the two arrays
                with np.load(scratch / f"bm25-{s:05d}.npz") as raw:
                    term, row, tf = raw["term"], raw["row"], raw["tf"].astype(np.float64)
                (scratch / f"bm25-{s:05d}.npz").unlink()
                weight = idf[term] * tf / (tf + K1 * (1 - B + B * dl[row].astype(np.float64) / avgdl))
                del tf
                order = np.argsort(term, kind="stable")  # rows were appended in order: each term's stay ascending
                term = term[order]
                row[order].astype("<u4").tofile(f_rows)
                weight[order].astype("<f4").tofile(f_scores)
                ids, first, count = np.unique(term, return_index=True, return_counts=True)
                db.executemany("INSERT INTO postings VALUES (?,?,?,?)",
                               zip(ids.tolist(), [s] * len(ids), (first + postings).tolist(), count.tolist()))
                postings += len(term)
        db.commit()
    finally:
        db.close()
    return {**settings(), "documents": n, "avgdl": round(avgdl, 6), "terms": len(terms), "postings": postings,
            "segments": [len(x) for x in lengths]}


class _Postings:
    """One of the two postings arrays on disk, read a slice at a time (``postings[a:b]``) with ``os.pread``.

    A memory map would do the same with fewer copies, but every page a query touches would then stay in the
    process's resident memory (a 1M-chunk index's 250 MB of postings: 200 queries added 252 MB at peak, 7 MB read
    this way, at the same speed); read this way they stay in the OS page cache, shared and reclaimable, and the
    process holds one query's slices.
    """

    def __init__(self, path: Path, dtype: str) -> None:
        self.dtype = np.dtype(dtype)
        self._fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop = part.start or 0, part.stop
        data = os.pread(self._fd, (stop - start) * self.dtype.itemsize, start * self.dtype.itemsize)
        return np.frombuffer(data, self.dtype)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class Bm25:
    """The stored BM25 of an index directory: :meth:`search` reads the query's terms from SQLite and
    their postings from the two arrays on disk; nothing is read at opening (thread-safe)."""

    def __init__(self, index_dir: str | Path, section: dict) -> None:
        self.dir = Path(index_dir)
        self.segments = [int(x) for x in section["segments"]]
        self.starts = np.concatenate([[0], np.cumsum(self.segments, dtype=np.int64)])
        self.postings = int(section["postings"])
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._rows = self._scores = None

    def _open(self) -> tuple[sqlite3.Connection, np.ndarray, np.ndarray]:
        """The term table and the two arrays, opened on the first search (call under the lock)."""
        if self._conn is None:
            path = self.dir / TERMS_FILE
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            try:
                conn.execute("SELECT term, id FROM terms LIMIT 1").fetchall()
                conn.execute("SELECT start FROM postings LIMIT 1").fetchall()
                self._rows, self._scores = (self._postings(name, dtype) for name, dtype in ((ROWS_FILE, "<u4"), (SCORES_FILE, "<f4")))
            except sqlite3.DatabaseError as e:
                conn.close()
                raise IndexError_(f"BM25 term table {path} is missing or corrupt ({e}): rebuild the index with --force") from None
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn, self._rows, self._scores

    def _postings(self, name: str, dtype: str) -> _Postings:
        path = self.dir / name
        want = self.postings * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size != want:
            raise IndexError_(f"BM25 file {path} is missing or not {want} bytes: rebuild the index with --force")
        return _Postings(path, dtype)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(row, score) of the ``k`` best-scoring chunks, best first (ties: lower row first); only chunks
        that hold a query term. A term repeated in the query counts as often, as in bm25s."""
        weights = Counter(tokens(query))
        if not weights or k <= 0:
            return []
        terms, found = list(weights), []
        with self._lock:
            conn, rows, scores = self._open()
            for i in range(0, len(terms), TERMS_PER_QUERY):
                part = terms[i : i + TERMS_PER_QUERY]
                found += conn.execute(f"SELECT t.term, p.segment, p.start, p.count FROM terms t JOIN postings p ON p.term = t.id "
                                      f"WHERE t.term IN ({','.join('?' * len(part))})", part).fetchall()
        by_segment: dict[int, list[tuple[int, int, int]]] = {}
        for term, seg, start, count in found:
            if not (0 <= seg < len(self.segments) and 0 <= start and start + count <= self.postings):
                raise IndexError_(f"BM25 term table {self.dir / TERMS_FILE} points outside the postings: rebuild the index with --force")
            by_segment.setdefault(seg, []).append((weights[term], start, count))
        best: list[tuple[float, int]] = []
        for seg, slices in by_segment.items():
            local = np.concatenate([rows[a : a + c] for _, a, c in slices]).astype(np.intp)
            w = np.concatenate([scores[a : a + c].astype(np.float64) * m for m, a, c in slices])
            if 4 * len(local) > self.segments[seg]:  # many postings: one dense sum over the segment's rows
                total = np.bincount(local, weights=w, minlength=self.segments[seg])
                ids = np.flatnonzero(total)
                total = total[ids]
            else:
                ids, inverse = np.unique(local, return_inverse=True)
                total = np.bincount(inverse, weights=w)
            if len(ids) > k:  # every chunk scoring at least the k-th best, then exactly by (score, row)
                keep = total >= np.partition(total, len(total) - k)[len(total) - k]
                ids, total = ids[keep], total[keep]
            take = np.lexsort((ids, -total))[:k]
            best += zip((-total[take]).tolist(), (ids[take] + self.starts[seg]).tolist())
        best.sort()
        return [(int(r), -s) for s, r in best[:k]]
