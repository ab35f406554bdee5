"""The sharded build: input blocks -> staged chunks -> duplicates dropped -> embedded shards -> FAISS.

The steps of ``build-index`` for the sharded layout (:mod:`rag_pipeline.index.format`). Each
worker step handles one unit and is a plain function, so the same code runs in this process one
unit after another (:class:`LocalRunner`) or on Ray workers (:mod:`rag_pipeline.index.ray_engine`):

1. :func:`plan_blocks` (driver): the input pieces (:func:`~rag_pipeline.index.ingest.iter_pieces`)
   grouped into blocks of about 1 MiB;
2. :func:`chunk_block` (worker): read and chunk a block, stage its chunks as Parquet in a scratch
   directory, return a 128-bit hash of each chunk's text;
3. :func:`plan_rows` (driver): exact duplicate texts dropped, the first in input order kept (as
   the SQLite layout's unique index does), rows numbered in input order, shards of ``shard_size``
   rows (so a build's rows, vectors and index do not depend on how many workers made them);
4. :func:`embed_shard` (worker): embed (or, with ``--update``, reuse) one shard's chunks, write it;
5. :func:`build_faiss` (driver, adds on workers): train once on a seeded sample, add each group
   of consecutive shards (:func:`add_jobs`) to a copy of the trained empty index, merge the copies
   on disk.

Only hashes (16 bytes per chunk), keep masks (1 bit per chunk) and counts pass through the driver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rag_pipeline.index import ann as ann
from rag_pipeline.index.format import INDEX_FILE, IVFDATA_FILE, IndexManifest, read_faiss_index, shard_files
from rag_pipeline.index.ingest import IngestReport, Piece, chunk_document, iter_pieces, read_piece
from rag_pipeline.index.store import ShardVectors, vectors_by_id, write_shard
from rag_pipeline.passage import StoredChunk

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20  # input bytes per chunking unit: ~1k chunks, small enough to spread a 1 MB corpus over workers
STAGED = ("id", "doc_id", "title", "source", "position", "text")


@dataclass(frozen=True)
class ChunkSettings:
    """What a chunking worker needs besides its embedder's tokenizer."""

    chunk_size: int
    chunk_overlap: int
    id_field: str
    title_field: str
    text_field: str


# ------------------------------------------------------------------------------------- 1. blocks


def plan_blocks(paths: list[str], block_bytes: int | None = None) -> list[dict]:
    """Chunking jobs: ``{"block": b, "pieces": [...]}``, pieces in input order, about ``block_bytes``
    (default :data:`BLOCK_BYTES`) each."""
    block_bytes = block_bytes or BLOCK_BYTES
    blocks: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for piece in iter_pieces(paths, block_bytes):
        current.append(piece)
        size += _piece_bytes(piece, block_bytes)
        if size >= block_bytes:
            blocks.append(current)
            current, size = [], 0
    if current:
        blocks.append(current)
    return [{"block": b, "pieces": [asdict(p) for p in pieces]} for b, pieces in enumerate(blocks)]


def _piece_bytes(piece: Piece, block_bytes: int) -> int:
    if piece.path.lower().endswith(".parquet") and not piece.whole:
        return block_bytes  # a row-group range was cut to about a block already
    try:
        size = Path(piece.path).stat().st_size
    except OSError:
        return 0
    return (size if piece.stop < 0 else piece.stop) - piece.start


# ------------------------------------------------------------------------------------- 2. chunks


def chunk_block(job: dict, token_offsets: Callable[[str], list[tuple[int, int]]], s: ChunkSettings, staging: Path) -> dict:
    """Read and chunk one block; stage its chunks (all, duplicates included) and return their hashes.

    Returns:
        ``{"block", "chunks", "hashes"}`` (16 bytes per chunk, in order), ``"doc_ids"`` (8-byte
        hashes of the documents' ids, for counting repeated ids) and ``"report"`` (this block's
        :class:`~rag_pipeline.index.ingest.IngestReport` as a dict).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    report = IngestReport()
    cols: dict[str, list] = {c: [] for c in STAGED}
    hashes, doc_ids = [], []
    for raw in job["pieces"]:
        for doc in read_piece(Piece(**raw), report, s.id_field, s.title_field, s.text_field):
            doc_ids.append(hashlib.blake2b(doc.id.encode(), digest_size=8).digest())
            for c in chunk_document(doc, token_offsets, s.chunk_size, s.chunk_overlap):
                for name in STAGED:
                    cols[name].append(getattr(c, name))
                hashes.append(hashlib.sha256(c.text.encode()).digest()[:16])
    if hashes:
        pq.write_table(pa.table(cols), staged_path(staging, job["block"]), compression="zstd")
    return {"block": job["block"], "chunks": len(hashes), "hashes": b"".join(hashes), "doc_ids": b"".join(doc_ids),
            "report": {"files": report.files, "documents": report.documents, "skipped": report.skipped}}


def staged_path(staging: Path, block: int) -> Path:
    return Path(staging) / f"block-{block:06d}.parquet"


# --------------------------------------------------------------------------------------- 3. rows


@dataclass
class RowPlan:
    """Which staged chunks become which rows, and the shards' jobs."""

    chunks: int  # kept
    duplicates: int
    repeated_ids: int
    keep: list[np.ndarray]  # per block, bool per staged chunk
    offsets: list[int]  # per block, the row of its first kept chunk
    shard_size: int

    def shard_jobs(self, staging: Path) -> list[dict]:
        """Embedding jobs: shard k holds rows ``[k * shard_size, ...)``, gathered from the blocks that hold them."""
        kept = [int(k.sum()) for k in self.keep]
        jobs, b = [], 0
        for k, first in enumerate(range(0, self.chunks, self.shard_size)):
            stop = min(self.chunks, first + self.shard_size)
            sources = []
            while b < len(self.keep) and self.offsets[b] + kept[b] <= first:
                b += 1
            j = b
            while j < len(self.keep) and self.offsets[j] < stop:
                if kept[j]:
                    lo, hi = max(first, self.offsets[j]) - self.offsets[j], min(stop, self.offsets[j] + kept[j]) - self.offsets[j]
                    sources.append({"path": str(staged_path(staging, j)), "keep": np.packbits(self.keep[j]).tobytes(),
                                    "n": len(self.keep[j]), "lo": lo, "hi": hi})
                j += 1
            jobs.append({"shard": k, "first_row": first, "rows": stop - first, "sources": sources})
        return jobs


def plan_rows(results: list[dict], shard_size: int) -> RowPlan:
    """Drop repeated texts (the first occurrence in block order stays) and number the rows."""
    results = sorted(results, key=lambda r: r["block"])
    hashes = np.frombuffer(b"".join(r["hashes"] for r in results), dtype="V16")
    keep_all = np.zeros(len(hashes), dtype=bool)
    keep_all[np.unique(hashes, return_index=True)[1]] = True  # np.unique's indices are first occurrences
    doc_ids = np.frombuffer(b"".join(r["doc_ids"] for r in results), dtype="V8")
    keep, offsets, at, row = [], [], 0, 0
    for r in results:
        k = keep_all[at : at + r["chunks"]]
        keep.append(k)
        offsets.append(row)
        at += r["chunks"]
        row += int(k.sum())
    return RowPlan(row, len(hashes) - row, len(doc_ids) - len(np.unique(doc_ids)), keep, offsets, shard_size)


def merge_reports(results: list[dict], report: IngestReport) -> None:
    for r in sorted(results, key=lambda r: r["block"]):
        rep = r["report"]
        report.merge(IngestReport(rep["files"], rep["documents"], [tuple(x) for x in rep["skipped"]]))


def fingerprint(plan: RowPlan, staging: Path) -> str:
    """The corpus fingerprint of the kept chunks, in row order (the SQLite layout's formula)."""
    import pyarrow.parquet as pq

    fp = hashlib.sha256()
    for b, keep in enumerate(plan.keep):
        if not keep.any():
            continue
        t = pq.read_table(staged_path(staging, b), columns=["id", "title", "source"]).filter(keep)
        for cid, title, source in zip(*(t.column(c).to_pylist() for c in ("id", "title", "source"))):
            fp.update(f"{cid}\x00{title}\x00{source}\n".encode())
    return fp.hexdigest()


# ------------------------------------------------------------------------------------- 4. shards


def read_shard_chunks(job: dict) -> list[StoredChunk]:
    """The chunks of one shard job, rows numbered, from the staged blocks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for src in job["sources"]:
        keep = np.unpackbits(np.frombuffer(src["keep"], dtype=np.uint8), count=src["n"]).astype(bool)
        tables.append(pq.read_table(src["path"], columns=list(STAGED)).take(np.nonzero(keep)[0][src["lo"] : src["hi"]]))
    t = pa.concat_tables(tables) if tables else None
    if t is None or t.num_rows != job["rows"]:
        raise RuntimeError(f"shard {job['shard']}: staged blocks gave {0 if t is None else t.num_rows} chunks, expected {job['rows']}")
    cols = [t.column(c).to_pylist() for c in STAGED]
    return [StoredChunk(job["first_row"] + i, *vals) for i, vals in enumerate(zip(*cols))]


def embed_shard(job: dict, encode: Callable[[list[str]], np.ndarray], dim: int, out_dir: Path,
                reuse: Callable[[list[str]], dict[str, np.ndarray]] | None = None) -> dict:
    """Embed one shard's chunks (those ``reuse`` does not know) and write the shard; returns counts."""
    chunks = read_shard_chunks(job)
    old = reuse([c.id for c in chunks]) if reuse is not None else {}
    todo = [i for i, c in enumerate(chunks) if c.id not in old]
    vectors = np.empty((len(chunks), dim), dtype=np.float32)
    if todo:
        vectors[todo] = encode([chunks[i].text for i in todo])
    for i, c in enumerate(chunks):
        if c.id in old:
            vectors[i] = old[c.id]
    write_shard(out_dir, job["shard"], chunks, vectors)
    return {"shard": job["shard"], "embedded": len(todo), "reused": len(chunks) - len(todo)}


# -------------------------------------------------------------------------------------- 5. FAISS


ADD_ROWS = 65_536  # vectors per add job at least: each job writes a copy of the trained index (30 MB at 16,384 lists)


def add_jobs(rows: list[int], out_dir: Path, scratch: Path, trained: Path, add_rows: int) -> list[tuple[str, list[str], int, str]]:
    """:func:`ann.add_shard_file` jobs over consecutive whole shards of at least ``add_rows`` vectors
    each (the last may hold fewer): 10M chunks in the default 8,192-row shards would otherwise write
    1,221 copies of the trained index (36 GB of scratch at 16,384 lists) before the merge."""
    jobs, group, first, size = [], [], 0, 0
    for i, r in enumerate(rows):
        group.append(str(out_dir / shard_files(i)[1]))
        size += r
        if size >= add_rows or i == len(rows) - 1:
            jobs.append((str(trained), group, first, str(scratch / f"ivf-{len(jobs):05d}.index")))
            first, group, size = first + size, [], 0
    return jobs


def build_faiss(out_dir: Path, scratch: Path, rows: list[int], dim: int, factory: str, params: ann.IndexParams, seed: int,
                add_all: Callable[[list[tuple[str, list[str], int, str]]], list[int]], add_rows: int | None = None):  # -> faiss.Index
    """Train on a seeded sample, add the shards in jobs of ``add_rows`` (default :data:`ADD_ROWS`)
    vectors (``add_all`` runs :func:`ann.add_shard_file` jobs, in parallel or not), merge IVF shards
    on disk; returns the written index, read back."""
    import faiss

    n = sum(rows)
    index = ann.make_index(factory, dim, params)
    ann.check_mergeable(index, factory)
    vectors = ShardVectors(out_dir, rows, dim)
    size = ann.train_size(index, n)
    if size:
        ann.train(index, vectors.get_rows(ann.sample_rows(n, size, seed)))
    if ann.kind_of(index) != "ivf":  # flat and HNSW cannot be merged: filled one shard after another
        for _, part in vectors.iter_shards():
            index.add(np.ascontiguousarray(part))
        faiss.write_index(index, str(out_dir / INDEX_FILE))
        return index
    trained = Path(scratch) / "trained.index"
    faiss.write_index(index, str(trained))
    del index
    jobs = add_jobs(rows, out_dir, Path(scratch), trained, add_rows or ADD_ROWS)
    t = time.perf_counter()
    added = add_all(jobs)
    log.info("added %d vectors in %d jobs of %d shards in %.1f s", sum(added), len(jobs), len(rows), time.perf_counter() - t)
    ann.merge_on_disk(trained, [Path(j[3]) for j in jobs], out_dir / INDEX_FILE, out_dir / IVFDATA_FILE)
    for j in jobs:
        Path(j[3]).unlink()
    return read_faiss_index(out_dir, on_disk=True)


# ------------------------------------------------------------------------------------ local runner


class LocalRunner:
    """Runs the worker steps in this process, one unit after another, with the already loaded embedder."""

    name = "local"

    def __init__(self, embedder, batch_size: int) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self.workers = 1

    def chunk(self, jobs: list[dict], settings: ChunkSettings, staging: Path) -> list[dict]:
        return [chunk_block(j, self.embedder.token_offsets, settings, staging) for j in jobs]

    def embed(self, jobs: list[dict], out_dir: Path, reuse_from: tuple[Path, IndexManifest] | None) -> list[dict]:
        lookup, close = vectors_by_id(*reuse_from) if reuse_from else (None, lambda: None)
        try:
            return [embed_shard(j, lambda texts: self.embedder.encode(texts, batch_size=self.batch_size), self.embedder.dim, out_dir, lookup)
                    for j in jobs]
        finally:
            close()

    def add(self, jobs: list[tuple[str, list[str], int, str]]) -> list[int]:
        return [ann.add_shard_file(*j) for j in jobs]

    def describe(self) -> dict:
        return {"name": self.name, "workers": 1}


def job_json(job: dict) -> str:
    """A job or result as one JSON string (Ray Data rows carry it as a single column); bytes as base64."""
    def enc(x):
        if isinstance(x, bytes):
            return {"__b": base64.b64encode(x).decode("ascii")}
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        if isinstance(x, list):
            return [enc(v) for v in x]
        return x

    return json.dumps(enc(job))


def job_from_json(text: str) -> dict:
    def dec(x):
        if isinstance(x, dict):
            return base64.b64decode(x["__b"]) if set(x) == {"__b"} else {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        return x

    return dec(json.loads(text))
