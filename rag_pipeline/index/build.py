"""``build-index``: documents -> chunks -> embeddings -> FAISS index directory.

Writes an index directory (format: :mod:`rag_pipeline.index.format`) in a temporary directory
beside the target, then swaps it in. :func:`run` builds and returns the manifest; :func:`main`
also prints what was done.

Two engines, one result (the same chunk ids and vectors from the same inputs):

- ``local`` (the default): this process. With the ``sqlite`` layout, two passes keep memory
  bounded: chunks stream into SQLite, embeddings are computed shard by shard and stored there,
  then the FAISS index is trained (IVF, on a seeded sample) and filled shard by shard.
- ``ray``: Ray Data workers (:mod:`rag_pipeline.index.ray_engine`, an optional extra) run the steps
  of the ``sharded`` layout (:mod:`rag_pipeline.index.sharded`): chunking, embedding into Parquet +
  ``.npy`` shards, and adding each shard to a copy of the trained index before an on-disk merge.
  ``--engine local --layout sharded`` runs the same steps in this process.

``--target-recall`` then picks the smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose
Recall@10 on a seeded sample of the corpus's own chunks as queries reaches it, and records it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rag_pipeline.atomic import atomic_dir, check_separate, prepare_target, staging_dir, write_json
from rag_pipeline.config import opt, to_dict
from rag_pipeline.device import check_device
from rag_pipeline.errors import ConfigError, IndexError_, InputError
from rag_pipeline.index import ann as ann
from rag_pipeline.index import bm25 as bm25
from rag_pipeline.index import ray_engine as ray_engine
from rag_pipeline.index import sharded as sharded
from rag_pipeline.index.ann import make_faiss_index  # noqa: F401  (the index types' constructor, long imported from here)
from rag_pipeline.index.embed import load_embedder
from rag_pipeline.index.format import (ARTIFACT, FORMAT_VERSIONS, INDEX_FILE, IVFDATA_FILE, KEYS_FILE, KIND, MANIFEST, STORE_FILE,
                                       IndexManifest, file_record, layout, read_manifest, shard_files)
from rag_pipeline.index.ingest import IngestReport, chunk_document, read_documents
from rag_pipeline.index.store import SCHEMA, ShardedChunkStore, ShardVectors, SqliteVectors, vectors_by_id, write_keys
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
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = opt("auto", "FAISS index type; auto: flat up to 50k chunks, hnsw up to 1M, "
                                                                    "above that OPQ + IVF-PQ (HNSW quantizer) with --rerank 20")
    ivf_pq: bool = opt(False, "for ivf: product-quantize vectors (IVF-PQ) instead of storing them (IVF-Flat)")
    nlist: int = opt(0, "ivf: number of lists; 0 = 4*sqrt(chunks), capped so each list gets 39 training points")
    nprobe: int = opt(16, "ivf: lists probed per query (recall vs speed); see --target-recall")
    pq_m: int = opt(16, "ivf-pq: sub-quantizers; must divide the dimension")
    hnsw_m: int = opt(32, "hnsw: neighbours per node")
    ef_construction: int = opt(200, "hnsw: build-time candidate list")
    ef_search: int = opt(128, "hnsw: query-time candidate list (recall vs speed); see --target-recall")
    faiss_factory: str = opt("", "a FAISS index_factory string (e.g. 'OPQ48,IVF16384_HNSW32,PQ48'); overrides --index-type and its settings")
    target_recall: float = opt(0.0, "pick the smallest nprobe (ivf) or efSearch (hnsw) whose Recall@10 on 1,000 of the corpus's own "
                                     "chunks as queries reaches this (0 = keep --nprobe / --ef-search; flat is exact: nothing to tune)")
    max_nprobe: int = opt(0, "--target-recall, ivf: the largest nprobe tried (0 = nlist; each step doubles, and an exhaustive "
                             "scan of 10M vectors takes long)")
    rerank: int = opt(0, "re-rank the top k*R candidates of each search by exact inner product with the stored vectors "
                         "(for IVF-PQ; 0 = automatic: 20 where --index-type auto picks IVF-PQ, else off; 1 = off)")
    batch_size: int = opt(64, "embedding batch size")
    shard_size: int = opt(8192, "chunks embedded and added per shard (bounds memory; the sharded layout's rows per shard)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to embed and build; auto = CUDA when present")
    engine: Literal["local", "ray"] = opt("local", "local: this process; ray: Ray Data workers (pip install '.[distributed]')")
    layout: Literal["auto", "sqlite", "sharded"] = opt("auto", "sqlite: one chunk store; sharded: Parquet + .npy shards and "
                                                             "on-disk IVF lists, for millions of chunks; auto: sharded with --engine ray")
    ray_address: str = opt("", "ray: cluster to join ('auto', HOST:6379, ray://HOST:10001); empty = start a local one")
    workers: int = opt(0, "ray: embedding actors; 0 = one per GPU, else one per --worker-cpus CPUs of the cluster")
    worker_cpus: int = opt(1, "ray: CPUs per embedding actor where there is no GPU (its torch threads)")
    ray_num_cpus: int = opt(0, "ray, local cluster: CPUs it may use (0 = all)")
    ray_object_store_mb: int = opt(0, "ray, local cluster: object store size in MiB (0 = Ray's default, 30%% of memory)")
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
        if self.chunk_size and self.chunk_overlap >= self.chunk_size:
            raise ConfigError(f"chunk_overlap {self.chunk_overlap} is not below chunk_size {self.chunk_size}: each chunk must move "
                              "on; lower --chunk-overlap or raise --chunk-size")
        for name in ("batch_size", "shard_size", "nprobe", "pq_m", "hnsw_m", "ef_construction", "ef_search", "worker_cpus"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("rerank", "max_nprobe", "workers", "ray_num_cpus", "ray_object_store_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off / automatic), got {getattr(self, name)}")
        if not 0 <= self.target_recall < 1:
            raise ConfigError(f"target_recall must be in [0, 1) (e.g. 0.95; 0 = keep --nprobe), got {self.target_recall}")
        if self.engine == "ray" and self.layout == "sqlite":
            raise ConfigError("--engine ray writes the sharded layout: drop --layout sqlite, or use --engine local")
        if self.ray_address and self.engine != "ray":
            raise ConfigError(f"--ray-address {self.ray_address} is for --engine ray: add --engine ray, or drop --ray-address")
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


def auto_index(cfg: IndexConfig, n: int, dim: int, settings: dict) -> tuple[str, IndexConfig]:
    """The index type for ``n`` chunks, and ``cfg`` with the measured scale recipe filled in where
    ``--index-type auto`` picked IVF and nothing narrower was asked for (no ``--faiss-factory``, no
    ``--ivf-pq``): the factory :func:`ann.scale_factory` and, with ``--rerank`` 0, re-ranking of
    R = 20 (``--rerank 1`` turns it off); otherwise ``cfg`` itself. IVF-Flat would keep every vector
    in its lists (15 GB at 10M 384-d chunks, in memory with the sqlite layout).

    Where the recipe applies, ``settings`` (the fingerprint, changed in place, so the manifest
    records it) names it: an index built before the recipe existed, or with other automatic
    choices, is then rebuilt instead of being reported up to date.
    """
    kind = cfg.index_type if cfg.index_type != "auto" else choose_index_type(n)
    if cfg.index_type != "auto" or kind != "ivf" or cfg.faiss_factory or cfg.ivf_pq:
        return kind, cfg
    out = dataclasses.replace(cfg, faiss_factory=ann.scale_factory(dim, n, cfg.nlist), rerank=cfg.rerank or ann.SCALE_RERANK)
    settings["auto_index"] = f"{out.faiss_factory} rerank {out.rerank}"
    return kind, out


def announce_scale(cfg: IndexConfig, n: int) -> None:
    """Log the scale recipe ``cfg`` carries (from :func:`auto_index`), and warn when nprobe is not tuned."""
    log.info("index type auto, %d chunks: %s, the top k*%d candidates of each search re-ranked exactly", n, cfg.faiss_factory, cfg.rerank)
    if not cfg.target_recall:
        log.warning("nprobe %d on %d chunks is a guess: pass --target-recall 0.9 to pick the smallest nprobe reaching it "
                    "(2 of 16,384 lists for Recall@10 0.9 at 10M synthetic vectors)", cfg.nprobe, n)


def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_layout(cfg: IndexConfig) -> str:
    return cfg.layout if cfg.layout != "auto" else "sharded" if cfg.engine == "ray" else "sqlite"


def settings_for_fingerprint(cfg: IndexConfig, chunk_size: int) -> dict:
    """The settings that change the index's content or search (not paths, engines or batch sizes)."""
    keys = ("embedder", "chunk_overlap", "index_type", "ivf_pq", "nlist", "nprobe", "pq_m", "hnsw_m",
            "ef_construction", "ef_search", "id_field", "title_field", "text_field", "seed")
    out = {**{k: getattr(cfg, k) for k in keys}, "chunk_size": chunk_size, "bm25": bm25.settings()}
    # Newer settings join only when set, so indexes built before they existed stay up to date (bm25 is always
    # set: an index built before BM25 was stored is rebuilt, its embeddings reused, see build_index).
    extra = {"faiss_factory": cfg.faiss_factory, "target_recall": cfg.target_recall, "max_nprobe": cfg.max_nprobe, "rerank": cfg.rerank,
             "layout": resolve_layout(cfg) if resolve_layout(cfg) != "sqlite" else ""}
    return {**out, **{k: v for k, v in extra.items() if v}}


def _write_chunks(db: sqlite3.Connection, cfg: IndexConfig, embedder, chunk_size: int, report: IngestReport) -> tuple[int, int, str]:
    """Stream documents into the store; returns (chunks, duplicates dropped, corpus fingerprint)."""
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


def _embed_all(db: sqlite3.Connection, n: int, cfg: IndexConfig, embedder, reuse: Callable[[list[str]], dict[str, np.ndarray]] | None) -> tuple[int, int]:
    """Fill the embedding column shard by shard; returns (embedded, reused)."""
    from tqdm.auto import tqdm

    embedded = reused = 0
    bar = tqdm(total=n, desc="embedding", unit="chunk", disable=None)
    for start in range(0, n, cfg.shard_size):
        rows = db.execute("SELECT row, id, text FROM chunks WHERE row >= ? AND row < ? ORDER BY row", (start, start + cfg.shard_size)).fetchall()
        old = reuse([r[1] for r in rows]) if reuse is not None else {}
        todo = [r for r in rows if r[1] not in old]
        vecs = embedder.encode([r[2] for r in todo], batch_size=cfg.batch_size) if todo else np.zeros((0, embedder.dim), np.float32)
        updates = [(old[r[1]].astype(np.float32).tobytes(), r[0]) for r in rows if r[1] in old] + [(v.tobytes(), r[0]) for r, v in zip(todo, vecs)]
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
    size = ann.train_size(index, n)  # before the move: a GPU index hides its nlist from extract_index_ivf
    on_gpu = use_gpu and ann.kind_of(index) in ("flat", "ivf") and ann.gpu_clonable(index)
    if on_gpu:
        try:
            index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as e:  # a factory FAISS cannot put on a GPU (e.g. some IVF-PQ or fast-scan codes): build here
            log.warning("%s cannot be built on the GPU (%s): building it on the CPU", cfg.faiss_factory or kind, str(e).splitlines()[0][:160])
            on_gpu = False
    if size:
        rows = ann.sample_rows(n, size, cfg.seed)
        sample = np.stack([np.frombuffer(db.execute("SELECT embedding FROM chunks WHERE row = ?", (int(r),)).fetchone()[0], np.float32) for r in rows])
        ann.train(index, sample)
    for start in range(0, n, cfg.shard_size):
        index.add(_read_vectors(db, start, min(n, start + cfg.shard_size), dim))
    if on_gpu:
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
        ConfigError: ``--index`` holds something other than an index, or overlaps an input; Ray
            is asked for and not installed or not reachable.
        IndexError_: ``--update`` of an index made with another embedder.
    """
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
    if cfg.chunk_overlap >= chunk_size:  # chunk_size 0 takes the embedder's, known only now
        raise ConfigError(f"chunk_overlap {cfg.chunk_overlap} is not below the chunk size, {chunk_size} tokens (the embedder's "
                          "maximum): lower --chunk-overlap")
    if cfg.update and old and (old["embedder"]["id"], old["embedder"]["weights_sha256"]) != (embedder.model_id, embedder.weights_hash):
        raise IndexError_(f"cannot --update {target}: it was built with embedder {old['embedder']['id']}, not {embedder.model_id}; rebuild with --force")
    check_index_settings(cfg, embedder.dim)
    report = IngestReport()
    settings = settings_for_fingerprint(cfg, chunk_size)
    build = _build_sharded if resolve_layout(cfg) == "sharded" else _build_sqlite
    build_cfg = cfg
    if old and not cfg.update and "bm25" not in old["settings"] and old["settings"] == {k: v for k, v in settings.items() if k != "bm25"}:
        log.info("index %s was built before BM25 was stored with it: adding it, reusing every embedding", target)
        build_cfg = dataclasses.replace(cfg, update=True)
    try:
        with atomic_dir(target, ARTIFACT) as tmp:
            manifest = build(tmp, target, build_cfg, embedder, chunk_size, old, report, settings)
            manifest.update({
                "kind": KIND,
                "embedder": {"id": embedder.model_id, "weights_sha256": embedder.weights_hash, "dim": embedder.dim, "max_tokens": embedder.max_tokens},
                "metric": "inner_product",
                "normalized": True,
                "chunking": {"size": chunk_size, "overlap": cfg.chunk_overlap, "unit": "embedder tokens"},
                "settings": settings,
                "config": to_dict(cfg),
                "versions": _versions(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.perf_counter() - t0, 2),
            })
            write_json(tmp / MANIFEST, manifest)
    except _UpToDate:
        log.info("index %s is up to date (same inputs and settings): nothing to do; pass --force to rebuild", target)
        return {**old, "up_to_date": True, "report": report.summary()}
    return {**manifest, "report": report.summary()}


def check_index_settings(cfg: IndexConfig, dim: int) -> None:
    """Reject index settings that FAISS would refuse only after chunking and embedding (hours at scale).

    Raises:
        ConfigError: ``faiss_factory`` is not a FAISS factory string for ``dim`` (or, in the
            sharded layout, cannot be merged on disk); ``pq_m`` does not divide ``dim``.
    """
    if cfg.faiss_factory:
        index = ann.make_index(cfg.faiss_factory, dim, cfg)
        if resolve_layout(cfg) == "sharded":
            ann.check_mergeable(index, cfg.faiss_factory)
    elif cfg.index_type in ("auto", "ivf"):
        ann.factory_string("ivf", dim, 0, cfg)  # checks that pq_m divides dim (with --ivf-pq)


def _unchanged(old: IndexManifest | None, cfg: IndexConfig, corpus_fp: str, settings: dict, embedder) -> bool:
    """The same chunks, settings and embedder weights (new weights under the same id or path embed differently)."""
    return (bool(old) and not cfg.force and old["corpus"]["fingerprint"] == corpus_fp and old["settings"] == settings
            and old["embedder"]["weights_sha256"] == embedder.weights_hash)


def _reuse_source(cfg: IndexConfig, target: Path, old: IndexManifest | None) -> tuple[Path, IndexManifest] | None:
    """Where ``--update`` reads unchanged chunks' embeddings: the old index, of either layout."""
    if not (cfg.update and old):
        return None
    needed = [target / KEYS_FILE] if layout(old) == "sharded" else [target / STORE_FILE]
    return (target, old) if all(p.is_file() for p in needed) else None


def _index_section(index, kind: str, factory: str, n: int, cfg: IndexConfig, tuning: ann.Tuning | None, **extra) -> dict:
    """The manifest's ``index`` section: type, factory string, parameters and the search settings in force."""
    nprobe = tuning.value if tuning and tuning.param == "nprobe" else cfg.nprobe
    ef_search = tuning.value if tuning and tuning.param == "ef_search" else cfg.ef_search
    return {"type": kind, "factory": factory, "ivf_pq": cfg.ivf_pq if kind == "ivf" and not cfg.faiss_factory else False,
            "nlist": ann.nlist_of(index), "nprobe": nprobe, "pq_m": cfg.pq_m, "hnsw_m": cfg.hnsw_m,
            "ef_construction": cfg.ef_construction, "ef_search": ef_search, "rerank": cfg.rerank,
            "tuning": tuning.to_dict() if tuning else None, **extra}


def _tune(index, kind: str, vectors, n: int, cfg: IndexConfig) -> ann.Tuning | None:
    """With ``--target-recall``: the smallest nprobe/efSearch reaching it on the corpus's own chunks as queries."""
    if not cfg.target_recall:
        return None
    if kind == "flat":  # auto picks flat for small corpora; an exhaustive index has no nprobe or efSearch
        log.info("--target-recall %.3f: the index is searched exhaustively (flat is exact); nothing to tune", cfg.target_recall)
        return None
    k = min(10, n - 1)
    if k < 1:
        raise InputError(f"--target-recall needs at least 2 chunks to measure recall on, got {n}: drop --target-recall")
    rows = ann.sample_rows(n, min(1000, n), cfg.seed + 1)
    queries = vectors.get_rows(rows)
    _, truth = ann.exact_topk(queries, vectors.iter_shards(rows=65536), k, exclude=rows)

    def found() -> np.ndarray:
        _, ids = ann.search(index, queries, k + 1, cfg.rerank, vectors)
        return np.array([[i for i in row if i != r][:k] for row, r in zip(ids.tolist(), rows.tolist())])

    tuning = ann.tune(index, kind, truth, found, cfg.target_recall, k, cfg.ef_search, max_value=cfg.max_nprobe if kind == "ivf" else 0)
    level = logging.INFO if tuning.reached else logging.WARNING
    log.log(level, "%s=%d gives Recall@%d %.3f on %d of the corpus's chunks (target %.3f%s)", tuning.param, tuning.value, k,
            tuning.recall, len(rows), cfg.target_recall, "" if tuning.reached else ": NOT reached; a finer index (more PQ bytes, --rerank) is needed")
    return tuning


def _build_sqlite(tmp: Path, target: Path, cfg: IndexConfig, embedder, chunk_size: int, old: IndexManifest | None, report: IngestReport,
                  settings: dict) -> dict:
    """The ``sqlite`` layout (format 1), in this process; returns the layout's part of the manifest."""
    db = sqlite3.connect(tmp / STORE_FILE)
    n, dups, corpus_fp = _write_chunks(db, cfg, embedder, chunk_size, report)
    log.info("%s; %d chunks, %d duplicate chunks dropped", report.summary(), n, dups)
    if n == 0:
        raise InputError(f"the inputs yielded no chunks ({report.summary()}): give files that contain text")
    kind, scaled = auto_index(cfg, n, embedder.dim, settings)
    if _unchanged(old, cfg, corpus_fp, settings, embedder):
        db.close()
        raise _UpToDate
    if scaled is not cfg:
        announce_scale(scaled, n)
    source = _reuse_source(cfg, target, old)
    lookup, close = vectors_by_id(*source) if source else (None, lambda: None)
    try:
        embedded, reused = _embed_all(db, n, cfg, embedder, lookup)
    finally:
        close()
    cfg = scaled
    use_gpu = cfg.device != "cpu" and faiss_gpu_available()
    index = _fill_index(db, n, kind, embedder.dim, cfg, use_gpu)
    kind = ann.kind_of(index)
    tuning = _tune(index, kind, SqliteVectors(db, embedder.dim), n, cfg)
    db.execute("DROP INDEX chunks_text")
    db.commit()
    with staging_dir(target) as scratch:
        bm25_section = bm25.build(tmp, (t for (t,) in db.execute("SELECT text FROM chunks ORDER BY row")), scratch)
    db.close()
    import faiss

    faiss.write_index(index, str(tmp / INDEX_FILE))
    return {
        "format_version": FORMAT_VERSIONS["sqlite"],
        "layout": "sqlite",
        "index": _index_section(index, kind, ann.factory_string(kind, embedder.dim, n, cfg), n, cfg, tuning, built_on_gpu=use_gpu),
        "corpus": {"fingerprint": corpus_fp, "files": report.files, "documents": report.documents, "chunks": n,
                   "duplicates_dropped": dups, "skipped": [{"path": p, "reason": r} for p, r in report.skipped]},
        "counts": {"embedded": embedded, "reused": reused},
        "engine": {"name": "local", "workers": 1},
        "bm25": bm25_section,
        "files": {name: file_record(tmp / name) for name in (INDEX_FILE, STORE_FILE, *bm25.FILES)},
    }


def _build_sharded(tmp: Path, target: Path, cfg: IndexConfig, embedder, chunk_size: int, old: IndexManifest | None, report: IngestReport,
                   settings: dict) -> dict:
    """The ``sharded`` layout (format 2), its worker steps run by the engine; returns the layout's part of the manifest."""
    chunk_settings = sharded.ChunkSettings(chunk_size, cfg.chunk_overlap, cfg.id_field, cfg.title_field, cfg.text_field)
    with _runner(cfg, embedder) as runner, staging_dir(target) as scratch:
        t = time.perf_counter()
        blocks = sharded.plan_blocks(cfg.paths)
        results = runner.chunk(blocks, chunk_settings, scratch)
        sharded.merge_reports(results, report)
        plan = sharded.plan_rows(results, cfg.shard_size)
        report.repeated_ids += plan.repeated_ids
        n, dups = plan.chunks, plan.duplicates
        log.info("%s; %d chunks, %d duplicate chunks dropped (%d blocks, %.1f s)", report.summary(), n, dups, len(blocks), time.perf_counter() - t)
        if plan.repeated_ids:
            log.warning("%d documents repeat an earlier document's id: their chunks are merged under one id; give each document a unique id", plan.repeated_ids)
        if n == 0:
            raise InputError(f"the inputs yielded no chunks ({report.summary()}): give files that contain text")
        corpus_fp = sharded.fingerprint(plan, scratch)
        kind, scaled = auto_index(cfg, n, embedder.dim, settings)
        if _unchanged(old, cfg, corpus_fp, settings, embedder):
            raise _UpToDate
        if scaled is not cfg:
            announce_scale(scaled, n)
        t = time.perf_counter()
        counts = runner.embed(plan.shard_jobs(scratch), tmp, _reuse_source(cfg, target, old))
        embedded, reused = sum(c["embedded"] for c in counts), sum(c["reused"] for c in counts)
        log.info("embedded %d chunks (%d reused) in %d shards in %.1f s", embedded, reused, len(counts), time.perf_counter() - t)
        rows = [job["rows"] for job in plan.shard_jobs(scratch)]
        write_keys(tmp, rows)
        cfg = scaled
        factory = ann.factory_string(kind, embedder.dim, n, cfg)
        index = sharded.build_faiss(tmp, scratch, rows, embedder.dim, factory, cfg, cfg.seed, runner.add)
        kind = ann.kind_of(index)
        tuning = _tune(index, kind, ShardVectors(tmp, rows, embedder.dim), n, cfg)
        engine = runner.describe()
    with staging_dir(target) as scratch, contextlib.closing(ShardedChunkStore(tmp, rows)) as store:  # the engine has stopped
        bm25_section = bm25.build(tmp, (c.text for c in store.iter_chunks()), scratch)
    names = [INDEX_FILE, KEYS_FILE, *bm25.FILES, *([IVFDATA_FILE] if (tmp / IVFDATA_FILE).is_file() else [])]
    names += [f for i in range(len(rows)) for f in shard_files(i)]
    return {
        "format_version": FORMAT_VERSIONS["sharded"],
        "layout": "sharded",
        "index": _index_section(index, kind, factory, n, cfg, tuning, built_on_gpu=False, on_disk=(tmp / IVFDATA_FILE).is_file()),
        "shards": {"rows": rows, "shard_size": cfg.shard_size},
        "corpus": {"fingerprint": corpus_fp, "files": report.files, "documents": report.documents, "chunks": n,
                   "duplicates_dropped": dups, "skipped": [{"path": p, "reason": r} for p, r in report.skipped]},
        "counts": {"embedded": embedded, "reused": reused},
        "engine": engine,
        "bm25": bm25_section,
        "files": {name: file_record(tmp / name) for name in names},
    }


@contextlib.contextmanager
def _runner(cfg: IndexConfig, embedder) -> Iterator[object]:
    """The engine that runs the sharded build's worker steps: this process, or a Ray cluster."""
    if cfg.engine == "local":
        yield sharded.LocalRunner(embedder, cfg.batch_size)
        return

    with ray_engine.connect(cfg.ray_address, cfg.ray_num_cpus, cfg.ray_object_store_mb):
        yield ray_engine.RayRunner(cfg.embedder, cfg.device, cfg.trust_remote_code, cfg.batch_size, embedder.dim, embedder.weights_hash,
                                   cfg.workers, cfg.worker_cpus)


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
    t = result["index"].get("tuning")
    if t:
        print(f"{t['param']} {t['value']}: Recall@{t['k']} {t['recall']:.3f} on {t['queries']} of the corpus's chunks as queries "
              f"(target {t['target']}{'' if t['reached'] else ', NOT reached: use more PQ bytes or --rerank'})")
    return 0
