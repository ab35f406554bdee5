"""store: reading a sharded index with more shards than the process may open files."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np
import pytest

from rag_pipeline.index import store as store
from rag_pipeline.errors import ResourceError
from rag_pipeline.index.store import ShardedChunkStore, ShardVectors, write_keys, write_shard
from rag_pipeline.passage import StoredChunk

SHARDS, ROWS, DIM = 300, 3, 8


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, list[StoredChunk], np.ndarray]:
    """300 tiny shards (Parquet chunks, .npy vectors) and keys.sqlite, written directly."""
    chunks = [StoredChunk(r, f"c{r}", f"d{r // 4}", f"T{r}", "s", r % 4, f"text of chunk {r}") for r in range(SHARDS * ROWS)]
    vectors = np.random.default_rng(0).standard_normal((SHARDS * ROWS, DIM)).astype(np.float32)
    for i in range(SHARDS):
        write_shard(tmp_path, i, chunks[i * ROWS : (i + 1) * ROWS], vectors[i * ROWS : (i + 1) * ROWS])
    write_keys(tmp_path, [ROWS] * SHARDS)
    return tmp_path, chunks, vectors


@pytest.fixture
def open_files_limit():
    """Set the soft limit on open files so that about ``n`` more can be opened; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def limit(n: int) -> None:
        fd = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor: the limit caps descriptor numbers
        os.close(fd)
        want = fd + n
        if hard != resource.RLIM_INFINITY and want > hard:
            pytest.skip(f"hard open-file limit {hard} is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_reading_more_shards_than_open_files_allowed(shards, open_files_limit) -> None:
    """Open shard files are bounded (an LRU of OPEN_SHARDS): reading all 300 shards' chunks and
    vectors works with room for fewer than 300 open files, and gives every row right."""
    index_dir, chunks, vectors = shards
    chunk_store, vecs = ShardedChunkStore(index_dir, [ROWS] * SHARDS), ShardVectors(index_dir, [ROWS] * SHARDS, DIM)
    open_files_limit(2 * store.OPEN_SHARDS + 40)  # both caches full, with room to spare, but far below 300
    order = np.random.default_rng(1).permutation(SHARDS * ROWS)
    assert chunk_store.get_rows(order.tolist()) == [chunks[r] for r in order]
    np.testing.assert_array_equal(vecs.get_rows(order), vectors[order])
    assert [c.row for c in chunk_store.iter_chunks(batch=2)] == list(range(SHARDS * ROWS))
    assert len(chunk_store._files) <= store.OPEN_SHARDS and len(vecs._files) <= store.OPEN_SHARDS
    assert chunk_store.get("c899") == chunks[899] and chunk_store.get_rows([0]) == [chunks[0]]  # evicted ones reopen
    chunk_store.close()
    assert len(chunk_store._files) == 0


def test_vector_maps_keep_every_shard_when_descriptors_allow(shards, open_files_limit, monkeypatch) -> None:
    """A re-ranked search reads rows of every shard each batch: with room under the open-file limit
    every shard stays mapped, so a second pass over all 300 opens nothing (an LRU of 64 would miss
    on every shard, every batch)."""
    index_dir, _, vectors = shards
    open_files_limit(SHARDS + store.OPEN_SHARDS + store.FD_RESERVE + 40)
    vecs = ShardVectors(index_dir, [ROWS] * SHARDS, DIM)
    opened: list[int] = []
    real = vecs._open_file
    monkeypatch.setattr(vecs, "_open_file", lambda i: opened.append(i) or real(i))
    order = np.random.default_rng(2).permutation(SHARDS * ROWS)
    for _ in range(2):
        np.testing.assert_array_equal(vecs.get_rows(order), vectors[order])
    assert sorted(opened) == list(range(SHARDS)) and len(vecs._files) == SHARDS


def test_vector_maps_beyond_the_budget_are_read_unpinned_not_thrashed(shards, monkeypatch, caplog) -> None:
    """With room for fewer maps than shards, the first shards read stay mapped and the others are
    mapped for one read: a second pass over all 300 reopens only those 236, where an LRU of 64
    would reopen all 300 every pass. The user is told how to raise the limit."""
    index_dir, _, vectors = shards
    monkeypatch.setattr(store, "file_budget", lambda n: 64)
    vecs = ShardVectors(index_dir, [ROWS] * SHARDS, DIM)
    opened: list[int] = []
    real = vecs._open_file
    monkeypatch.setattr(vecs, "_open_file", lambda i: opened.append(i) or real(i))
    order = np.random.default_rng(3).permutation(SHARDS * ROWS)
    np.testing.assert_array_equal(vecs.get_rows(order), vectors[order])
    assert len(opened) == SHARDS and len(vecs._files) == 64
    np.testing.assert_array_equal(vecs.get_rows(order), vectors[order])
    assert len(opened) == 2 * SHARDS - 64 and len(vecs._files) == 64
    assert "300 vector shards" in caplog.text and f"ulimit -n {SHARDS + store.OPEN_SHARDS + store.FD_RESERVE}" in caplog.text


@pytest.mark.parametrize(("soft", "shards", "budget"), [(1024, 153, 153), (1024, 1221, 704), (200, 300, 64), (20000, 10, 64)])
def test_file_budget_follows_the_open_file_limit(monkeypatch, soft: int, shards: int, budget: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda what: (soft, 1 << 20))
    assert store.file_budget(shards) == budget


def test_running_out_of_file_descriptors_is_not_called_corruption(shards, open_files_limit) -> None:
    index_dir, _, _ = shards
    chunk_store, vecs = ShardedChunkStore(index_dir, [ROWS] * SHARDS), ShardVectors(index_dir, [ROWS] * SHARDS, DIM)
    open_files_limit(0)  # no descriptor left to open a shard with
    for read in (lambda: vecs.get_rows(np.array([4])), lambda: chunk_store.get_rows([4])):
        with pytest.raises(ResourceError, match=r"too many open files.*ulimit -n") as e:
            read()
        assert "--force" not in str(e.value) and "\n" not in str(e.value)


def test_vector_rows_are_read_not_mapped(tmp_path: Path) -> None:
    """Re-ranking reads its candidates' vectors with pread: any order, repeats and runs of
    consecutive rows come back right, and no shard is memory-mapped (a map's touched pages would
    stay in the process's resident memory). A shard cut short is named, with the fix."""
    vectors = np.random.default_rng(4).standard_normal((2 * 50, DIM)).astype(np.float32)
    chunks = [StoredChunk(r, f"c{r}", "d", "T", "s", r, "t") for r in range(100)]
    for i in range(2):
        write_shard(tmp_path, i, chunks[i * 50 : (i + 1) * 50], vectors[i * 50 : (i + 1) * 50])
    vecs = ShardVectors(tmp_path, [50, 50], DIM)
    rows = np.array([7, 8, 9, 60, 7, 99, 0, 49, 50, 10, 61, 62, 8])
    np.testing.assert_array_equal(vecs.get_rows(rows), vectors[rows])
    assert vecs.get_rows(np.array([], dtype=np.int64)).shape == (0, DIM)
    mapped = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    assert str(tmp_path) not in mapped
    vecs.close()
    shard = sorted(tmp_path.rglob("*.npy"))[1]
    shard.write_bytes(shard.read_bytes()[:-DIM * 4])  # the last row cut off, the header intact
    with pytest.raises(store.IndexError_, match=r"truncated: rebuild with --force"):
        ShardVectors(tmp_path, [50, 50], DIM).get_rows(np.array([99]))
