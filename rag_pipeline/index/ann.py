"""FAISS indexes: which index a setting means, the sharded build, search settings, re-ranking.

One owner for the nearest-neighbour side of an index, used by ``build-index`` (both engines),
the retriever and ``bench/bench_scale.py``:

- :func:`factory_string` / :func:`make_index`: the FAISS index a configuration means, always
  inner product on unit vectors (cosine), named by a FAISS ``index_factory`` string that the
  manifest records;
- the sharded build: :func:`train` once on a seeded sample (:func:`sample_rows`), then
  :func:`add_shard_file` each group of shards of vectors to a copy of the trained empty index (in parallel on
  Ray workers, or one after another), and :func:`merge_on_disk` the IVF shards into on-disk
  inverted lists, so no step holds all the vectors or two copies of the lists;
- search settings: :func:`apply_search_params` (``nprobe``, HNSW ``efSearch``), and
  :func:`tune` which picks the smallest value reaching a target Recall@k against
  :func:`exact_topk`, an exact search that streams over vector shards;
- :func:`search`: FAISS search, then optionally the top ``k * rerank`` candidates re-ranked by
  exact inner product with the stored vectors (what IVF-PQ needs for high recall at scale).

Recall@k here is the overlap of the returned top-k with the exact top-k, divided by k.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rag_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below this many training points per centroid
TRAIN_POINTS_FLOOR = 100_000  # sample at least this many (when the corpus has them), at most 256 per list
TRAIN_POINTS_CAP = 1_000_000  # and at most this many (1.5 GB at 384-d) unless 39 per list needs more: bounded memory at any n


class IndexParams(Protocol):
    """The index settings of :class:`~rag_pipeline.index.build.IndexConfig` that this module reads."""

    nlist: int
    nprobe: int
    ivf_pq: bool
    pq_m: int
    hnsw_m: int
    ef_construction: int
    ef_search: int
    faiss_factory: str


def ivf_nlist(n: int, nlist: int = 0) -> int:
    """Lists of an IVF index over ``n`` vectors: ``nlist``, or 4*sqrt(n); capped so each list gets 39 training points."""
    nlist = nlist or int(4 * math.sqrt(n))
    return max(1, min(nlist, n // MIN_POINTS_PER_LIST or 1))


def factory_string(kind: str, dim: int, n: int, p: IndexParams) -> str:
    """The FAISS ``index_factory`` string of index type ``kind`` for ``n`` vectors (or ``p.faiss_factory`` when set)."""
    if p.faiss_factory:
        return p.faiss_factory
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{p.hnsw_m}"
    if kind != "ivf":
        raise ConfigError(f"unknown index type {kind!r}: choose one of auto, flat, hnsw, ivf")
    if p.ivf_pq and dim % p.pq_m:
        raise ConfigError(f"pq_m={p.pq_m} must divide the embedding dimension {dim}: pick a divisor of {dim}")
    # "np": no polysemous training, which only serves Hamming-filtered search (off here) and took
    # 272 s against 3.5 s to train PQ64 on 1M vectors
    return f"IVF{ivf_nlist(n, p.nlist)},{f'PQ{p.pq_m}np' if p.ivf_pq else 'Flat'}"


SCALE_RERANK = 20  # the re-rank factor of scale_factory's index: the top 200 candidates of a top-10 search (R = 10 topped out
# at Recall@10 0.88 on 10M vectors, R = 20 reached 0.92 from nprobe 8: bench/bench_scale.py)


def scale_factory(dim: int, n: int, nlist: int = 0) -> str:
    """The index ``--index-type auto`` builds above a million chunks, as ``bench/bench_scale.py``
    measures it: OPQ-rotated 8-bit PQ codes of one byte per 6 dimensions (64 bytes at 384-d, 0.7 GB
    of codes and ids at 10M), IVF with 4,096 lists up to 2M vectors and 16,384 above (``nlist``
    when set), an HNSW coarse quantizer, no polysemous training (``np``). Searched with
    :data:`SCALE_RERANK` exact re-ranking: PQ distances alone found 0.39-0.42 of the true top 10
    at 1M and 10M."""
    m = max(d for d in range(1, max(1, dim // 6) + 1) if dim % d == 0)
    return f"OPQ{m},IVF{ivf_nlist(n, nlist or (4096 if n <= 2_000_000 else 16384))}_HNSW32,PQ{m}np"


def gpu_clonable(index) -> bool:
    """Whether ``index_cpu_to_all_gpus`` can take ``index``: flat, or IVF over a flat coarse quantizer
    (FAISS has no GPU HNSW, so :func:`scale_factory`'s index is built on the CPU)."""
    import faiss

    ivf = _ivf(index)
    if ivf is None:
        return kind_of(index) == "flat"
    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)


def make_index(factory: str, dim: int, p: IndexParams):  # -> faiss.Index
    """An empty inner-product index from a factory string, with the build and search settings of ``p``.

    Raises:
        ConfigError: FAISS does not understand ``factory``.
    """
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"faiss_factory {factory!r} is not a FAISS index_factory string for dimension {dim} "
                          f"({str(e).splitlines()[0][:160]}): e.g. 'IVF4096,PQ48' or 'OPQ48,IVF16384_HNSW32,PQ48'") from None
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = p.ef_construction
    apply_search_params(index, kind_of(index), p.nprobe, p.ef_search)
    return index


def make_faiss_index(kind: str, dim: int, n: int, p: IndexParams):  # -> faiss.Index
    """An empty FAISS index of ``kind`` for inner product on normalized vectors (cosine)."""
    return make_index(factory_string(kind, dim, n, p), dim, p)


def check_mergeable(index, factory: str) -> None:
    """Fail unless shards of ``index`` can be merged on disk (:func:`merge_on_disk`): an IVF index,
    alone or behind transforms (OPQ, PCA), whose lists are plain arrays. Non-IVF indexes pass
    (they are filled shard by shard, not merged).

    Raises:
        ConfigError: a refine stage, an id map or another wrapper around the IVF index, or lists
            of another kind (fast-scan ``...x4fs`` codes in blocks).
    """
    import faiss

    ivf = _ivf(index)
    if ivf is None:
        return
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else faiss.downcast_index(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(base, faiss.IndexIVF):
        why = f"its IVF index is wrapped in {type(base).__name__}"
    elif not isinstance(lists, faiss.ArrayInvertedLists):
        why = f"its lists are {type(lists).__name__}, not plain arrays"
    else:
        return
    raise ConfigError(f"faiss_factory {factory!r} cannot be merged on disk by the sharded layout ({why}): use a plain IVF "
                      "factory such as 'OPQ48,IVF16384_HNSW32,PQ48', with --rerank 20 for exact re-ranking")


def _ivf(index):  # -> faiss.IndexIVF | None
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index):  # -> faiss.IndexHNSW | None
    import faiss

    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else faiss.downcast_index(index)
    return base if isinstance(base, faiss.IndexHNSW) else None


def kind_of(index) -> str:
    """``ivf``, ``hnsw`` or ``flat`` (any other index searched exhaustively) for a FAISS index."""
    return "ivf" if _ivf(index) is not None else "hnsw" if _hnsw(index) is not None else "flat"


def nlist_of(index) -> int | None:
    ivf = _ivf(index)
    return int(ivf.nlist) if ivf is not None else None


def apply_search_params(index, kind: str, nprobe: int, ef_search: int) -> None:
    """Set the query-time settings: IVF ``nprobe`` (at most nlist; an HNSW coarse quantizer's
    ``efSearch`` follows it), HNSW ``efSearch``."""
    import faiss

    if kind == "ivf":
        ivf = _ivf(index)
        ivf.nprobe = max(1, min(nprobe, ivf.nlist))
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):  # the coarse search must return nprobe good lists
            quantizer.hnsw.efSearch = max(ef_search, 2 * ivf.nprobe)
    elif kind == "hnsw":
        _hnsw(index).hnsw.efSearch = ef_search


@contextlib.contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null while FAISS's C++ code prints its notes there (resizing
    on-disk lists, a moved .ivfdata), so that ``search --json`` stays JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


# ----------------------------------------------------------------------------- training and shards


def train_size(index, n: int) -> int:
    """How many vectors to train on: none for untrained-free indexes; for IVF, 256 per list up to
    1M (:data:`TRAIN_POINTS_CAP`, so the sample's memory does not grow with the corpus: 16,384 lists
    would otherwise take 4.2M vectors, 6.4 GB at 384-d, twice over behind OPQ), but at least 100k
    and 39 per list; never more than ``n``."""
    if index.is_trained:
        return 0
    nlist = nlist_of(index) or 1
    return min(n, max(min(256 * nlist, TRAIN_POINTS_CAP), TRAIN_POINTS_FLOOR, MIN_POINTS_PER_LIST * nlist))


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` distinct rows of ``n``, sorted (so shards are read in order)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


TWO_LEVEL_MIN_NLIST = 4096  # from here, flat k-means costs hours on a few cores: cluster in two levels


def train(index, sample: np.ndarray) -> None:
    """Train the (empty) index on ``sample`` (float32, (size, dim)).

    IVF indexes of :data:`TWO_LEVEL_MIN_NLIST` lists or more get their coarse centroids from
    two-level k-means (``faiss.contrib.clustering.two_level_clustering``: sqrt(nlist) clusters,
    then each split in proportion to its size), which costs about 2*sqrt(nlist) instead of nlist
    distance computations per training vector; the rest (OPQ, PQ) trains as usual.
    """
    t = time.perf_counter()
    x = np.ascontiguousarray(sample, dtype=np.float32)
    ivf = _ivf(index)
    if ivf is not None and ivf.nlist >= TWO_LEVEL_MIN_NLIST:
        _train_two_level(index, x)
    else:
        index.train(x)
    log.info("trained %s on %d vectors in %.1f s", type(index).__name__, len(sample), time.perf_counter() - t)


def _train_two_level(index, x: np.ndarray) -> None:
    import faiss
    from faiss.contrib.clustering import two_level_clustering

    if isinstance(index, faiss.IndexPreTransform):  # OPQ and friends: train and apply the transform first
        for i in range(index.chain.size()):
            vt = index.chain.at(i)
            vt.train(x)
            x = vt.apply(x)
        _train_two_level(faiss.downcast_index(index.index), x)
        index.is_trained = True
        return
    ivf = faiss.extract_index_ivf(index)
    # L2 k-means on unit vectors gives the same partition as spherical k-means would for inner product.
    centroids, _ = two_level_clustering(x, int(math.sqrt(ivf.nlist)), ivf.nlist, clustering_niter=10)
    ivf.quantizer.train(centroids)
    ivf.quantizer.add(centroids)
    ivf.is_trained = ivf.quantizer.is_trained and ivf.quantizer.ntotal == ivf.nlist
    index.train(x)  # the quantizer is full, so only the encoder (PQ) is trained here


def add_shard_file(trained_path: str, vectors_paths: list[str], first_row: int, out_path: str) -> int:
    """What a worker runs: the trained empty index read from ``trained_path``, the ``.npy`` files of
    ``vectors_paths`` (consecutive shards, memory-mapped, added one at a time) added as rows
    ``first_row...``, written to ``out_path``; returns the vectors added."""
    import faiss

    index = faiss.read_index(trained_path)
    if index.ntotal:
        raise ValueError(f"{trained_path} is not empty ({index.ntotal} vectors)")
    row = first_row
    for path in vectors_paths:
        vectors = np.load(path, mmap_mode="r")
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.arange(row, row + len(vectors), dtype=np.int64))
        row += len(vectors)
    faiss.write_index(index, out_path)
    return row - first_row


def merge_on_disk(trained_path: Path, shard_paths: list[Path], index_path: Path, ivfdata_path: Path) -> int:
    """Merge IVF shard indexes into ``trained_path``'s empty index, lists on disk; returns the total.

    The shards are memory-mapped and their lists copied straight into ``ivfdata_path``
    (``OnDiskInvertedLists.merge_from_multiple``, as ``faiss.contrib.ondisk.merge_ondisk``),
    so the merged lists are never held in memory. Of each shard only its inverted lists (a
    memory map and a few bytes per list) stay alive until the copy: its coarse quantizer and
    codebooks (tens of MB for a large nlist) are freed as soon as it is read, so memory does not
    grow with the shard count. The shards hold their rows' ids, so the merged index is the same
    whatever the sharding.
    """
    import faiss

    index = faiss.read_index(str(trained_path))
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal:
        raise ValueError(f"{trained_path} is not empty ({index.ntotal} vectors)")
    holders = [_shard_lists(p) for p in shard_paths]  # each owns one shard's lists, unmapped when it goes
    lists = faiss.InvertedListsPtrVector()
    for h in holders:
        lists.push_back(h.invlists)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata_path))
    with c_stdout_silenced():
        ntotal = invlists.merge_from_multiple(lists.data(), lists.size(), False)
    del lists, holders
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()  # the index owns (and frees) the merged lists now
    faiss.write_index(index, str(index_path))
    del index, ivf
    return int(ntotal)


def _shard_lists(path: Path):  # -> faiss.IndexIVF
    """Shard ``path``'s inverted lists, memory-mapped, in an empty one-dimensional IVF index that
    owns them (freed, and unmapped, with it); the shard's own index is freed here.

    The lists change owner in C++ (``replace_invlists(own=True)``): SWIG's ``this.acquire()`` on
    a bare lists proxy would do it in Python, but deleting two such proxies tears down SWIG's type
    table (every later FAISS object comes back as a bare ``SwigPyObject``).
    """
    import faiss

    shard = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    sivf = faiss.extract_index_ivf(shard)
    holder = faiss.IndexIVFFlat(faiss.IndexFlatL2(1), 1, sivf.nlist)  # a few bytes per list besides the lists
    holder.code_size = sivf.code_size  # replace_invlists checks it
    holder.replace_invlists(sivf.invlists, True)
    sivf.own_invlists = False  # the shard's destructor leaves them to the holder
    del shard, sivf
    return holder


# ---------------------------------------------------------------------------- exact search, recall


def exact_topk(queries: np.ndarray, batches: Iterable[tuple[int, np.ndarray]], k: int, exclude: np.ndarray | None = None,
               block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over vectors given as (first row, block) batches, streaming.

    Memory is O(queries * (k + block)), never the corpus. ``exclude[i]`` (a row or -1) is left out
    of query i's results: a corpus chunk used as a query would otherwise find itself.

    Returns:
        (scores, rows), each (len(queries), k), best first; rows -1 where fewer than k exist.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for first, vecs in batches:
        for a in range(0, len(vecs), block):
            part = np.asarray(vecs[a : a + block], dtype=np.float32)
            s = q @ part.T  # (queries, block)
            if exclude is not None:
                local = exclude - (first + a)
                hit = (local >= 0) & (local < len(part))
                s[np.nonzero(hit)[0], local[hit]] = -np.inf
            ids = np.broadcast_to(np.arange(first + a, first + a + len(part), dtype=np.int64), s.shape)
            best_s, best_i = _merge_topk(best_s, best_i, s, ids, k)
    return best_s, best_i


def _merge_topk(s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([s1, s2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.arange(s.shape[1])[None].repeat(len(s), 0)
    s, i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.lexsort((i, -s), axis=1)  # best score first; ties by row, so results are reproducible
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return s, np.where(np.isfinite(s), i, -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k found ∩ exact top-k| / k (ids -1 never count)."""
    hits = [len(set(f[:k].tolist()) & (set(t[:k].tolist()) - {-1})) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k if hits else 0.0


# -------------------------------------------------------------------------------------- searching


class Vectors(Protocol):
    """Stored vectors read by row (``.npy`` shards, or the SQLite store)."""

    def get_rows(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass
class SearchTimings:
    """Seconds spent per phase of searches, accumulated (``Retriever.search_batch(timings=...)``)."""

    embed: float = 0.0  # the query embedding
    faiss: float = 0.0  # index.search (candidates)
    rerank: float = 0.0  # reading stored vectors and exact re-scoring
    fetch: float = 0.0  # reading the hits' chunks from the store
    queries: int = 0


def search(index, queries: np.ndarray, k: int, rerank: int = 0, vectors: Vectors | None = None,
           timings: SearchTimings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) for each query; with ``rerank`` R > 1 and ``vectors``, the top ``k*R``
    FAISS candidates are re-scored by exact inner product with the stored vectors.

    Rows are -1 (score -inf) where the index returns fewer than ``k``.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    fetch = k * rerank if rerank > 1 and vectors is not None else k
    t = time.perf_counter()
    scores, ids = index.search(q, min(fetch, max(1, index.ntotal)))
    t_faiss = time.perf_counter()
    if fetch > k:
        scores, ids = rerank_exact(q, ids, vectors, k)
    if timings is not None:
        timings.faiss += t_faiss - t
        timings.rerank += time.perf_counter() - t_faiss
        timings.queries += len(q)
    return scores, ids


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, vectors: Vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` of each query's candidate rows by exact inner product with their stored vectors."""
    import faiss

    valid = candidates >= 0
    rows = np.unique(candidates[valid])
    table = np.ascontiguousarray(vectors.get_rows(rows), dtype=np.float32)  # (unique candidates, dim), read once however many queries share them
    pos = np.ascontiguousarray(np.where(valid, np.searchsorted(rows, candidates), -1), dtype=np.int64)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.zeros(candidates.shape, np.float32)
    if len(rows):  # FAISS scores each (query, candidate) pair in place, on all cores: no (queries, candidates, dim) gather
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(q), faiss.swig_ptr(table), faiss.swig_ptr(pos),
                                         q.shape[1], len(q), candidates.shape[1])
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    kk = min(k, candidates.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    s, i = np.take_along_axis(scores, top, 1), np.take_along_axis(candidates, top, 1)
    return s, np.where(np.isfinite(s), i, -1)


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune` chose and measured (recorded in the manifest)."""

    param: str  # "nprobe" or "ef_search"
    value: int
    recall: float  # Recall@k at value
    target: float
    reached: bool
    k: int
    queries: int
    tried: dict[int, float]  # value -> Recall@k

    def to_dict(self) -> dict:
        return {"param": self.param, "value": self.value, "recall": round(self.recall, 4), "target": self.target, "reached": self.reached,
                "k": self.k, "queries": self.queries, "tried": {str(v): round(r, 4) for v, r in sorted(self.tried.items())}}


def tune(index, kind: str, truth: np.ndarray, search_fn: Callable[[], np.ndarray], target: float, k: int,
         ef_search: int = 16, max_value: int = 0) -> Tuning:
    """The smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose Recall@``k`` reaches ``target``.

    ``search_fn()`` searches the held queries with the index's current setting and returns the
    found rows; ``truth`` holds their exact top-``k``. Values double until the target is reached
    (or nlist, or efSearch 4096, or ``max_value``, is passed), then a binary search between the last
    two finds the smallest; recall grows with either setting, up to noise. When nothing reaches the
    target the largest value is kept and ``reached`` is False.
    """
    if kind not in ("ivf", "hnsw"):
        raise ConfigError(f"target_recall needs an ivf or hnsw index (this one is {kind}, already exact): set it to 0")
    top = nlist_of(index) if kind == "ivf" else 4096
    top = min(top, max_value) if max_value else top
    tried: dict[int, float] = {}

    def recall(v: int) -> float:
        if v not in tried:
            apply_search_params(index, kind, v, ef_search if kind == "ivf" else v)
            tried[v] = recall_at_k(search_fn(), truth, k)
            log.info("%s=%d: Recall@%d %.4f", "nprobe" if kind == "ivf" else "efSearch", v, k, tried[v])
        return tried[v]

    lo, v = 0, 1 if kind == "ivf" else k
    while recall(v) < target and v < top:
        lo, v = v, min(2 * v, top)
    hi = v
    if tried[hi] >= target:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if recall(mid) >= target else (mid, hi)
    apply_search_params(index, kind, hi, ef_search if kind == "ivf" else hi)
    return Tuning("nprobe" if kind == "ivf" else "ef_search", hi, tried[hi], target, tried[hi] >= target, k, len(truth), tried)
