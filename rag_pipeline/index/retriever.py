"""Retriever: an index directory loaded once, searched by query text.

Loading checks the manifest against the files and the embedder: another embedder, a changed
model, a dimension mismatch, a corrupt or truncated file each raise :class:`IndexError_`,
never a wrong answer. FAISS's ``-1`` ids (k above the index size) never map to a chunk.
Both layouts load the same way; the manifest's search settings (``nprobe``, ``ef_search``,
``rerank``) are applied, and ``search_batch(timings=...)`` reports the query embedding, the
FAISS search, the re-ranking and the store reads apart.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from pathlib import Path

import numpy as np

from rag_pipeline.errors import IndexError_
from rag_pipeline.index import ann as ann
from rag_pipeline.index.ann import SearchTimings
from rag_pipeline.index.bm25 import Bm25
from rag_pipeline.index.embed import load_embedder
from rag_pipeline.index.format import IVFDATA_FILE, IndexManifest, SearchRecord, check_files, read_faiss_index, read_manifest
from rag_pipeline.index.store import ChunkStore, ShardedChunkStore, open_store, open_vectors
from rag_pipeline.passage import Hit

log = logging.getLogger(__name__)


class Retriever:
    """Dense (FAISS) retrieval, optionally fused with BM25 by reciprocal-rank fusion."""

    def __init__(self, index_dir: Path, manifest: IndexManifest, index, store: ChunkStore | ShardedChunkStore, embedder) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.index = index
        self.store = store
        self.embedder = embedder
        self.rerank = int(manifest["index"].get("rerank") or 0)
        self._vectors = None  # stored embeddings, opened on the first re-ranked search
        self._bm25 = Bm25(index_dir, manifest["bm25"]) if "bm25" in manifest else None  # stored with the index (bm25.py)
        self._bm25_memory = None  # built from every chunk's text, for indexes made before BM25 was stored
        self._bm25_lock = threading.Lock()

    @classmethod
    def load(cls, index_dir: str | Path, embedder=None, device: str = "auto", verify: bool = True, expect_embedder: str | None = None,
             manifest: IndexManifest | None = None) -> Retriever:
        """Load and check an index directory.

        Args:
            embedder: an already loaded embedder (must be the one the index was built with).
            verify: check the files' sha256 against the manifest (catches corrupt or truncated files).
            expect_embedder: fail unless the index was built with this embedder id.
            manifest: the directory's manifest when the caller has already read it with
                :func:`~rag_pipeline.index.format.read_manifest` (it is read once).
        """
        index_dir = Path(index_dir)
        manifest = manifest if manifest is not None else read_manifest(index_dir)
        built_with = manifest["embedder"]["id"]
        if expect_embedder is not None and expect_embedder != built_with:
            raise IndexError_(f"index {index_dir} was built with embedder {built_with}, not {expect_embedder}: rebuild it with --embedder {expect_embedder} or use the matching embedder")
        check_files(index_dir, manifest, verify)
        index = read_faiss_index(index_dir, on_disk=IVFDATA_FILE in manifest["files"])
        dim = manifest["embedder"]["dim"]
        if index.d != dim:
            raise IndexError_(f"index dimension {index.d} differs from the manifest's {dim}: rebuild the index with --force")
        store = open_store(index_dir, manifest)
        if index.ntotal != manifest["corpus"]["chunks"] or len(store) != index.ntotal:
            raise IndexError_(f"index holds {index.ntotal} vectors, store {len(store)} chunks, manifest {manifest['corpus']['chunks']}: rebuild with --force")
        _apply_search_params(index, manifest["index"])
        embedder = embedder or load_embedder(built_with, device=device)
        if embedder.model_id != built_with or embedder.weights_hash != manifest["embedder"]["weights_sha256"]:
            raise IndexError_(f"index {index_dir} was built with {built_with} (weights {manifest['embedder']['weights_sha256'][:12]}), but the embedder given is {embedder.model_id} (weights {embedder.weights_hash[:12]}): use the same embedder, or rebuild the index with build-index --force")
        if embedder.dim != dim:
            raise IndexError_(f"embedder dimension {embedder.dim} differs from the index's {dim}: rebuild the index with this embedder")
        return cls(index_dir, manifest, index, store, embedder)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: str, k: int = 5, hybrid: bool = False) -> list[Hit]:
        """Top-``k`` chunks for one query, best first (fewer when the index is smaller)."""
        return self.search_batch([query], k, hybrid)[0]

    def search_batch(self, queries: list[str], k: int = 5, hybrid: bool = False, timings: SearchTimings | None = None) -> list[list[Hit]]:
        """Top-``k`` chunks per query; queries are embedded and searched as one batch.

        ``timings``, when given, accumulates the seconds of each phase (query embedding, FAISS
        search, re-ranking, chunk reads), so that the index's own speed can be seen.
        """
        return self.search_with_cosine(queries, k, hybrid, timings)[0]

    def search_with_cosine(self, queries: list[str], k: int = 5, hybrid: bool = False,
                           timings: SearchTimings | None = None) -> tuple[list[list[Hit]], list[float | None]]:
        """:meth:`search_batch`'s hits, and each query's best dense cosine from the same search (None: no chunk found).

        Fused (``hybrid``) scores are reciprocal ranks, not cosines: a relevance threshold needs the dense one.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if not queries:
            return [], []
        t = time.perf_counter()
        vectors = self.embedder.encode(list(queries))
        if timings is not None:
            timings.embed += time.perf_counter() - t
        scores, ids = self.search_vectors(vectors, k if not hybrid else max(k, 50), timings)
        t = time.perf_counter()
        if hybrid:
            out = [self._fuse(q, s, i, k) for q, s, i in zip(queries, scores, ids)]
        else:
            out = [self._hits(s, i) for s, i in zip(scores, ids)]
        if timings is not None:
            timings.fetch += time.perf_counter() - t
        best = [next((float(x) for x, row in zip(s, i) if row >= 0), None) for s, i in zip(scores, ids)]  # best first
        return out, best

    def search_vectors(self, vectors: np.ndarray, k: int, timings: SearchTimings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw search, shape (n, min(k, size)), re-ranked when the index says so; ``-1`` ids are
        possible for approximate indexes."""
        k = min(k, len(self))
        if self.rerank > 1 and self._vectors is None:
            self._vectors = open_vectors(self.index_dir, self.manifest, self.store)
        return ann.search(self.index, vectors, k, self.rerank, self._vectors, timings)

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        keep = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0]
        chunks = self.store.get_rows([i for _, i in keep])
        return [Hit(c, s, r) for r, ((s, _), c) in enumerate(zip(keep, chunks), 1)]

    def _fuse(self, query: str, scores: np.ndarray, ids: np.ndarray, k: int, c: int = 60) -> list[Hit]:
        """Reciprocal-rank fusion of dense and BM25 rankings: score = sum 1 / (c + rank)."""
        bm25_ids = self._bm25_search(query, max(k, 50))
        fused: dict[int, float] = {}
        for ranking in ([int(i) for i in ids if i >= 0], bm25_ids):
            for rank, row in enumerate(ranking, 1):
                fused[row] = fused.get(row, 0.0) + 1.0 / (c + rank)
        top = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        chunks = self.store.get_rows([r for r, _ in top])
        return [Hit(ch, s, rank) for rank, ((_, s), ch) in enumerate(zip(top, chunks), 1)]

    def _bm25_search(self, query: str, k: int) -> list[int]:
        """Rows of the ``k`` best BM25 chunks: from the index's stored BM25 (:mod:`~rag_pipeline.index.bm25`), or, for an
        index built before it was stored, from a BM25 built in memory from every chunk's text on the first query."""
        if self._bm25 is not None:
            return [row for row, _ in self._bm25.search(query, min(k, len(self)))]
        import bm25s

        with self._bm25_lock:
            if self._bm25_memory is None:
                self._bm25_memory = _memory_bm25(self.index_dir, self.store)
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        docs, scores = self._bm25_memory.retrieve(tokens, k=min(k, len(self)), show_progress=False)
        return [int(d) for d, s in zip(docs[0], scores[0]) if s > 0]  # as the stored BM25: only chunks holding a query term


def _memory_bm25(index_dir: Path, store: ChunkStore | ShardedChunkStore):  # -> bm25s.BM25
    """A BM25 over every chunk's text, for an index built before BM25 was stored with it."""
    import bm25s

    log.warning("index %s has no stored BM25 (built before it was): building one in memory from every chunk's text; "
                "`rag-pipeline build-index --update` stores it with the index", index_dir)
    corpus = [c.text for c in store.iter_chunks()]
    model = bm25s.BM25()
    with contextlib.redirect_stdout(io.StringIO()):  # bm25s prints progress notes to stdout
        model.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    return model


def _apply_search_params(index, params: SearchRecord) -> None:
    ann.apply_search_params(index, params["type"], int(params.get("nprobe") or 1), int(params.get("ef_search") or 16))
