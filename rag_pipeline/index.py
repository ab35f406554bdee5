"""``build-index``: documents -> chunks -> embeddings -> FAISS index directory.

Writes an index directory (format: :mod:`rag_pipeline.index_format`) in a temporary directory
beside the target, then swaps it in. :func:`run` builds and returns the manifest; :func:`main`
also prints what was done.

Two passes keep memory bounded: chunks stream into SQLite, embeddings are computed shard by
shard and stored there, then the FAISS index is trained (IVF, on a seeded sample) and filled
shard by shard from the store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rag_pipeline.atomic import atomic_dir, check_separate, prepare_target, write_json
from rag_pipeline.config import opt, to_dict
from rag_pipeline.device import check_device
from rag_pipeline.errors import ConfigError, IndexError_, InputError
from rag_pipeline.index_format import ARTIFACT, FORMAT_VERSION, INDEX_FILE, KIND, MANIFEST, STORE_FILE, file_record, read_manifest
from rag_pipeline.ingest import IngestReport, chunk_document, read_documents
from rag_pipeline.model_paths import MINILM_ID

log = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    """Settings of ``build-index``; the index directory records them."""

    paths: list[str] = opt(factory=list, help="files and folders to index (.txt .md .html .json .jsonl .pdf)")
    index: str = opt("indexes/disfl_qa", "index directory to write")
    embedder: str = opt(MINILM_ID, "sentence-transformers model id or path (hashing:DIM is the test fake)")
    chunk_size: int = opt(0, "chunk size in embedder tokens; 0 = the embedder's max length, so nothing is truncated")
    chunk_overlap: int = opt(32, "tokens shared by consecutive chunks of a document")
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = opt("auto", "FAISS index type; auto picks by corpus size")
    ivf_pq: bool = opt(False, "for ivf: product-quantize vectors (IVF-PQ) instead of storing them (IVF-Flat)")
    nlist: int = opt(0, "ivf: number of lists; 0 = 4*sqrt(chunks), capped so each list gets 39 training points")
    nprobe: int = opt(16, "ivf: lists probed per query (recall vs speed)")
    pq_m: int = opt(16, "ivf-pq: sub-quantizers; must divide the dimension")
    hnsw_m: int = opt(32, "hnsw: neighbours per node")
    ef_construction: int = opt(200, "hnsw: build-time candidate list")
    ef_search: int = opt(128, "hnsw: query-time candidate list (recall vs speed)")
    batch_size: int = opt(64, "embedding batch size")
    shard_size: int = opt(8192, "chunks embedded and added per shard (bounds memory)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to embed and build; auto = CUDA when present")
    id_field: str = opt("id", "JSON/JSONL field holding the document id")
    title_field: str = opt("title", "JSON/JSONL field holding the title")
    text_field: str = opt("text", "JSON/JSONL field holding the text")
    force: bool = opt(False, "rebuild even when inputs and settings are unchanged")
    update: bool = opt(False, "reuse embeddings of unchanged chunks from the existing index; drop removed documents")
    seed: int = opt(0, "seed for the IVF training sample")
    trust_remote_code: bool = opt(False, "allow custom model code from the embedder's folder")

    def __post_init__(self) -> None:
        if self.chunk_size < 0:
            raise ConfigError(f"chunk_size must be >= 0 (0 = embedder max), got {self.chunk_size}")
        if self.chunk_overlap < 0:
            raise ConfigError(f"chunk_overlap must be >= 0, got {self.chunk_overlap}")
        for name in ("batch_size", "shard_size", "nprobe", "pq_m", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.force and self.update:
            raise ConfigError("--force and --update contradict each other: pass one of them")
        if any(not str(p).strip() for p in self.paths):  # Path("") is the working directory
            raise ConfigError(f"paths holds an empty entry ({self.paths!r}): remove it, or name the files and folders to index")
        check_device(self.device)


class _UpToDate(Exception):
    """Raised inside the build to abandon the temporary directory when nothing changed."""


def choose_index_type(n: int) -> str:
    """Exact search while it is cheap; graph search for medium corpora; IVF beyond a million."""
    if n <= 50_000:
        return "flat"
    if n <= 1_000_000:
        return "hnsw"
    return "ivf"


def _nlist(cfg: IndexConfig, n: int) -> int:
    nlist = cfg.nlist or int(4 * math.sqrt(n))
    return max(1, min(nlist, n // 39 or 1))


def make_faiss_index(kind: str, dim: int, n: int, cfg: IndexConfig):  # -> faiss.Index
    """An empty FAISS index of ``kind`` for inner product on normalized vectors (cosine)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        return index
    quantizer = faiss.IndexFlatIP(dim)
    nlist = _nlist(cfg, n)
    if cfg.ivf_pq:
        if dim % cfg.pq_m:
            raise ConfigError(f"pq_m={cfg.pq_m} must divide the embedding dimension {dim}: pick a divisor of {dim}")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(cfg.nprobe, nlist)
    return index


def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def settings_for_fingerprint(cfg: IndexConfig, chunk_size: int) -> dict:
    """The settings that change the index's content (not paths, flags or batch sizes)."""
    keys = ("embedder", "chunk_overlap", "index_type", "ivf_pq", "nlist", "nprobe", "pq_m", "hnsw_m",
            "ef_construction", "ef_search", "id_field", "title_field", "text_field", "seed")
    return {**{k: getattr(cfg, k) for k in keys}, "chunk_size": chunk_size}


def _write_chunks(db: sqlite3.Connection, cfg: IndexConfig, embedder, chunk_size: int, report: IngestReport) -> tuple[int, int, str]:
    """Stream documents into the store; returns (chunks, duplicates dropped, corpus fingerprint)."""
    from rag_pipeline.store import SCHEMA

    db.executescript(SCHEMA + "ALTER TABLE chunks ADD COLUMN text_hash TEXT; CREATE UNIQUE INDEX chunks_text ON chunks(text_hash);")
    fp = hashlib.sha256()
    n = dups = 0
    docs = read_documents(cfg.paths, report, cfg.id_field, cfg.title_field, cfg.text_field)
    for doc in docs:
        for c in chunk_document(doc, embedder.token_offsets, chunk_size, cfg.chunk_overlap):
            th = hashlib.sha256(c.text.encode()).hexdigest()
            cur = db.execute(
                "INSERT OR IGNORE INTO chunks (row, id, doc_id, title, source, position, text, text_hash) VALUES (?,?,?,?,?,?,?,?)",
                (n, c.id, c.doc_id, c.title, c.source, c.position, c.text, th),
            )
            if cur.rowcount == 1:
                fp.update(f"{c.id}\x00{c.title}\x00{c.source}\n".encode())
                n += 1
            else:
                dups += 1
    db.commit()
    return n, dups, fp.hexdigest()


def _embed_all(db: sqlite3.Connection, n: int, cfg: IndexConfig, embedder, reuse: sqlite3.Connection | None) -> tuple[int, int]:
    """Fill the embedding column shard by shard; returns (embedded, reused)."""
    from tqdm.auto import tqdm

    embedded = reused = 0
    bar = tqdm(total=n, desc="embedding", unit="chunk", disable=None)
    for start in range(0, n, cfg.shard_size):
        rows = db.execute("SELECT row, id, text FROM chunks WHERE row >= ? AND row < ? ORDER BY row", (start, start + cfg.shard_size)).fetchall()
        old: dict[str, bytes] = {}
        if reuse is not None:
            ids = [r[1] for r in rows]
            for i in range(0, len(ids), 900):  # SQLite's parameter limit
                part = ids[i : i + 900]
                old.update(reuse.execute(f"SELECT id, embedding FROM chunks WHERE id IN ({','.join('?' * len(part))})", part))
        todo = [r for r in rows if r[1] not in old]
        vecs = embedder.encode([r[2] for r in todo], batch_size=cfg.batch_size) if todo else np.zeros((0, embedder.dim), np.float32)
        updates = [(old[r[1]], r[0]) for r in rows if r[1] in old] + [(v.tobytes(), r[0]) for r, v in zip(todo, vecs)]
        db.executemany("UPDATE chunks SET embedding = ? WHERE row = ?", updates)
        db.commit()
        embedded += len(todo)
        reused += len(rows) - len(todo)
        bar.update(len(rows))
    bar.close()
    return embedded, reused


def _read_vectors(db: sqlite3.Connection, start: int, stop: int, dim: int) -> np.ndarray:
    blobs = [b for (b,) in db.execute("SELECT embedding FROM chunks WHERE row >= ? AND row < ? ORDER BY row", (start, stop))]
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, dim)


def _fill_index(db: sqlite3.Connection, n: int, kind: str, dim: int, cfg: IndexConfig, use_gpu: bool):
    """Train (IVF) on a seeded sample and add vectors shard by shard, on GPU when asked."""
    import faiss

    index = make_faiss_index(kind, dim, n, cfg)
    if use_gpu and kind in ("flat", "ivf"):
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        n_train = min(n, max(256 * _nlist(cfg, n), 39 * _nlist(cfg, n)), 100_000)
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=n_train, replace=False))
        sample = np.stack([np.frombuffer(db.execute("SELECT embedding FROM chunks WHERE row = ?", (int(r),)).fetchone()[0], np.float32) for r in rows])
        index.train(sample)
    for start in range(0, n, cfg.shard_size):
        index.add(_read_vectors(db, start, min(n, start + cfg.shard_size), dim))
    if use_gpu and kind in ("flat", "ivf"):
        index = faiss.index_gpu_to_cpu(index)
    return index


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rag-pipeline", "faiss-cpu", "faiss-gpu", "sentence-transformers", "torch", "transformers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def build_index(cfg: IndexConfig, embedder=None) -> dict:
    """Build (or update, or skip when unchanged) the index directory; returns its manifest.

    Raises:
        InputError: no inputs, or inputs that yield no chunks (nothing is written).
        ConfigError: ``--index`` holds something other than an index, or overlaps an input.
        IndexError_: ``--update`` of an index made with another embedder.
    """
    from rag_pipeline.embed import load_embedder

    if not cfg.paths:
        raise InputError("no input paths: pass files or folders, e.g. `rag-pipeline build-index corpus/disfl_qa/documents.jsonl`")
    t0 = time.perf_counter()
    target = Path(cfg.index)
    check_separate(cfg.paths, target, "--index")
    prepare_target(target, ARTIFACT)
    # --force rebuilds whatever the old manifest says (even a damaged one); otherwise it is read and checked.
    old = read_manifest(target) if (target / MANIFEST).is_file() and not cfg.force else None
    embedder = embedder or load_embedder(cfg.embedder, cfg.device, cfg.trust_remote_code)
    chunk_size = cfg.chunk_size or embedder.max_tokens
    if chunk_size > embedder.max_tokens:
        raise ConfigError(f"chunk_size {chunk_size} exceeds the embedder's max of {embedder.max_tokens} tokens: chunks would be truncated; use at most {embedder.max_tokens}")
    if cfg.update and old and (old["embedder"]["id"], old["embedder"]["weights_sha256"]) != (embedder.model_id, embedder.weights_hash):
        raise IndexError_(f"cannot --update {target}: it was built with embedder {old['embedder']['id']}, not {embedder.model_id}; rebuild with --force")
    report = IngestReport()
    settings = settings_for_fingerprint(cfg, chunk_size)
    use_gpu = cfg.device != "cpu" and faiss_gpu_available()
    try:
        with atomic_dir(target, ARTIFACT) as tmp:
            db = sqlite3.connect(tmp / STORE_FILE)
            n, dups, corpus_fp = _write_chunks(db, cfg, embedder, chunk_size, report)
            log.info("%s; %d chunks, %d duplicate chunks dropped", report.summary(), n, dups)
            if n == 0:
                raise InputError(f"the inputs yielded no chunks ({report.summary()}): give files that contain text")
            if old and not cfg.force and old["corpus"]["fingerprint"] == corpus_fp and old["settings"] == settings:
                db.close()
                raise _UpToDate
            reuse_path = target / STORE_FILE
            reuse = sqlite3.connect(f"file:{reuse_path}?mode=ro", uri=True) if cfg.update and old and reuse_path.is_file() else None
            embedded, reused = _embed_all(db, n, cfg, embedder, reuse)
            if reuse is not None:
                reuse.close()
            kind = cfg.index_type if cfg.index_type != "auto" else choose_index_type(n)
            index = _fill_index(db, n, kind, embedder.dim, cfg, use_gpu)
            db.execute("DROP INDEX chunks_text")
            db.commit()
            db.close()
            import faiss

            faiss.write_index(index, str(tmp / INDEX_FILE))
            manifest = {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "embedder": {"id": embedder.model_id, "weights_sha256": embedder.weights_hash, "dim": embedder.dim, "max_tokens": embedder.max_tokens},
                "metric": "inner_product",
                "normalized": True,
                "chunking": {"size": chunk_size, "overlap": cfg.chunk_overlap, "unit": "embedder tokens"},
                "index": {"type": kind, "ivf_pq": cfg.ivf_pq if kind == "ivf" else False, "nlist": _nlist(cfg, n) if kind == "ivf" else None,
                          "nprobe": cfg.nprobe, "pq_m": cfg.pq_m, "hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction,
                          "ef_search": cfg.ef_search, "built_on_gpu": use_gpu},
                "corpus": {"fingerprint": corpus_fp, "files": report.files, "documents": report.documents, "chunks": n,
                           "duplicates_dropped": dups, "skipped": [{"path": p, "reason": r} for p, r in report.skipped]},
                "counts": {"embedded": embedded, "reused": reused},
                "settings": settings,
                "config": to_dict(cfg),
                "files": {name: file_record(tmp / name) for name in (INDEX_FILE, STORE_FILE)},
                "versions": _versions(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.perf_counter() - t0, 2),
            }
            write_json(tmp / MANIFEST, manifest)
    except _UpToDate:
        log.info("index %s is up to date (same inputs and settings): nothing to do; pass --force to rebuild", target)
        return {**old, "up_to_date": True, "report": report.summary()}
    return {**manifest, "report": report.summary()}


run = build_index  # the stage contract's library entry: run(cfg) -> manifest


def main(cfg: IndexConfig) -> int:
    """``rag-pipeline build-index``: build, then print what was indexed (or that nothing changed)."""
    result = run(cfg)
    c = result["corpus"]
    if result.get("up_to_date"):
        print(f"index {result['config']['index']} is up to date ({c['chunks']} chunks): nothing to do (--force rebuilds)")
        return 0
    print(result["report"])
    for s in c["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    print(f"indexed {c['chunks']} chunks from {c['documents']} documents ({c['duplicates_dropped']} duplicate chunks dropped; "
          f"{result['counts']['embedded']} embedded, {result['counts']['reused']} reused) -> {result['config']['index']} "
          f"[{result['index']['type']}, dim {result['embedder']['dim']}, {result['build_seconds']} s]")
    return 0
