"""ann: streaming exact top-k, re-ranking, the sharded IVF build against a single-shard one, the nprobe helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag_pipeline.index import ann as ann
from rag_pipeline.errors import ConfigError
from rag_pipeline.index.build import IndexConfig
from rag_pipeline.index.format import read_faiss_index
from rag_pipeline.index.sharded import LocalRunner, build_faiss


def clustered(n: int, d: int, seed: int, centers: int = 40, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around seeded cluster centres, as embeddings of a topical corpus are."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(1234).standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ db.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def write_shards(out: Path, x: np.ndarray, sizes: list[int]) -> list[int]:
    (out / "shards").mkdir(parents=True)
    at = 0
    for i, size in enumerate(sizes):
        np.save(out / "shards" / f"part-{i:05d}.npy", x[at : at + size])
        at += size
    assert at == len(x)
    return sizes


def test_exact_topk_streams_to_the_bruteforce_answer() -> None:
    x, q = clustered(3000, 16, 0), clustered(20, 16, 1)
    batches = [(a, x[a : a + 700]) for a in range(0, 3000, 700)]  # uneven last batch
    s, i = ann.exact_topk(q, batches, 10, block=256)
    bs, bi = brute(x, q, 10)
    np.testing.assert_allclose(s, bs, atol=1e-5)
    assert (i == bi).mean() > 0.99  # only exact ties may swap
    # a query that is a corpus row does not find itself when excluded
    rows = np.array([5, 2999, 1234])
    _, own = ann.exact_topk(x[rows], batches, 3, exclude=rows)
    assert not any(r in found for r, found in zip(rows, own.tolist()))
    _, with_self = ann.exact_topk(x[rows], batches, 1)
    assert with_self[:, 0].tolist() == rows.tolist()


def test_rerank_returns_the_exact_order_of_the_candidates() -> None:
    x, q = clustered(500, 16, 2), clustered(5, 16, 3)

    class Rows:
        def get_rows(self, rows: np.ndarray) -> np.ndarray:
            return x[rows]

    rng = np.random.default_rng(0)
    cand = np.stack([rng.choice(500, size=40, replace=False) for _ in range(5)])  # FAISS returns each row once
    cand[0, 3:] = -1  # fewer candidates than k for one query
    s, i = ann.rerank_exact(q, cand, Rows(), 10)
    for qi in range(5):
        valid = sorted({int(c) for c in cand[qi] if c >= 0}, key=lambda r: -float(x[r] @ q[qi]))
        got = [int(r) for r in i[qi] if r >= 0]
        assert [float(x[r] @ q[qi]) for r in got] == pytest.approx([float(x[r] @ q[qi]) for r in valid[:10]], abs=1e-5)
    assert (i[0, 3:] == -1).all() and np.isneginf(s[0, 3:]).all()


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8"])
@pytest.mark.parametrize(("add_rows", "jobs"), [(1, 5), (1500, 3)])  # one add job per shard; shards grouped 2 + 2 + 1
def test_sharded_build_equals_single_shard_build_at_exhaustive_nprobe(tmp_path: Path, factory: str, add_rows: int, jobs: int) -> None:
    """Adding shards (alone or in groups) to copies of the trained index and merging on disk gives
    the index a single shard gives: the same (row, score) results, here at nprobe = nlist (exhaustive)."""
    x, q = clustered(4000, 32, 4), clustered(50, 32, 5)
    cfg = IndexConfig(nprobe=32)
    results = {}
    for name, sizes in (("one", [4000]), ("five", [900, 900, 900, 900, 400])):
        out = tmp_path / name
        rows = write_shards(out, x, sizes)
        (tmp_path / f"scratch-{name}").mkdir()
        seen: list[int] = []

        def add_all(batch: list) -> list[int]:
            seen.append(len(batch))
            return LocalRunner(None, 64).add(batch)

        index = build_faiss(out, tmp_path / f"scratch-{name}", rows, 32, factory, cfg, seed=0, add_all=add_all, add_rows=add_rows)
        assert index.ntotal == 4000 and (out / "index.ivfdata").is_file()
        assert seen == [1 if name == "one" else jobs]
        reread = read_faiss_index(out, on_disk=True)
        ann.apply_search_params(reread, "ivf", 32, 16)
        results[name] = reread.search(q, 10)
    np.testing.assert_array_equal(results["one"][1], results["five"][1])
    np.testing.assert_allclose(results["one"][0], results["five"][0], atol=1e-6)
    if factory.endswith("Flat"):  # IVF-Flat at nprobe = nlist is exact
        bs, bi = brute(x, q, 10)
        np.testing.assert_allclose(results["five"][0], bs, atol=1e-4)


def test_nprobe_helper_picks_the_smallest_value_reaching_the_target() -> None:
    x = clustered(6000, 32, 6, centers=60, spread=1.5)  # hard enough that nprobe 1 reaches only ~0.5
    cfg = IndexConfig(nprobe=1)
    index = ann.make_index("IVF64,Flat", 32, cfg)
    index.train(x)
    index.add(x)
    rows = ann.sample_rows(6000, 300, 7)
    queries = x[rows]
    _, truth = ann.exact_topk(queries, [(0, x)], 10, exclude=rows)

    def found() -> np.ndarray:
        _, ids = ann.search(index, queries, 11)
        return np.array([[i for i in row if i != r][:10] for row, r in zip(ids.tolist(), rows.tolist())])

    t = ann.tune(index, "ivf", truth, found, 0.95, 10)
    assert t.reached and t.recall >= 0.95 and t.param == "nprobe" and 1 < t.value < 64
    assert faiss_nprobe(index) == t.value
    # the value below the chosen one misses the target: it is the smallest
    ann.apply_search_params(index, "ivf", t.value - 1, 16)
    assert ann.recall_at_k(found(), truth, 10) < 0.95
    # an unreachable target keeps the largest value and says so
    unreachable = ann.tune(index, "ivf", truth, lambda: truth[:, ::-1] * 0 - 1, 0.5, 10)
    assert not unreachable.reached and unreachable.value == 64


def faiss_nprobe(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).nprobe)


def test_bad_factory_string_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"not a FAISS index_factory string.*e\.g\.") as e:
        ann.make_index("IVF,Nonsense", 32, IndexConfig())
    assert "\n" not in str(e.value)


def test_merge_keeps_only_the_shards_inverted_lists_alive(tmp_path: Path, monkeypatch) -> None:
    """During the on-disk merge no shard's full index (coarse quantizer, codebooks) is alive, only
    its lists: memory must not grow with the shard count. The merged index is still exact."""
    import weakref

    import faiss

    x, q = clustered(3000, 32, 8), clustered(20, 32, 9)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    rows = write_shards(out, x, [600] * 5)
    scratch.mkdir()
    shard_indexes: list[weakref.ref] = []
    alive_at_merge: list[int] = []
    real_read, real_merge = faiss.read_index, faiss.OnDiskInvertedLists.merge_from_multiple

    def read_index(path, *flags):
        index = real_read(path, *flags)
        if flags and flags[0] & faiss.IO_FLAG_MMAP:  # a shard being merged
            shard_indexes.append(weakref.ref(index))
        return index

    def merge_from_multiple(self, *args):
        alive_at_merge.append(sum(r() is not None for r in shard_indexes))
        return real_merge(self, *args)

    monkeypatch.setattr(faiss, "read_index", read_index)
    monkeypatch.setattr(faiss.OnDiskInvertedLists, "merge_from_multiple", merge_from_multiple)
    index = build_faiss(out, scratch, rows, 32, "IVF16,Flat", IndexConfig(nprobe=16), seed=0, add_all=LocalRunner(None, 64).add, add_rows=1)
    assert len(shard_indexes) == 5 and alive_at_merge == [0]
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the shards' lists were unmapped after the merge, not leaked
        assert "ivf-0000" not in maps.read_text()
    ann.apply_search_params(index, "ivf", 16, 16)  # exhaustive: IVF-Flat equals brute force if the lists were copied intact
    s, _ = index.search(q, 10)
    np.testing.assert_allclose(s, brute(x, q, 10)[0], atol=1e-4)


@pytest.mark.parametrize("factory", ["IVF16,PQ8,Refine(Flat)", "OPQ8,IVF16,PQ8,RFlat", "IVF16,PQ8x4fs", "IDMap,IVF16,Flat", "IDMap2,IVF16,PQ8"])
def test_factories_the_on_disk_merge_cannot_take_are_refused(tmp_path: Path, factory: str) -> None:
    """A refine stage, fast-scan lists or an id map would be merged wrongly (or crash):
    the sharded build refuses them, naming the factory and one that works, before adding any shard."""
    out = tmp_path / "out"
    rows = write_shards(out, clustered(1000, 32, 10), [500, 500])

    def add_all(jobs: list) -> list[int]:
        raise AssertionError("no shard may be added")

    with pytest.raises(ConfigError, match=r"cannot be merged on disk by the sharded layout \(.*\): use a plain IVF factory") as e:
        build_faiss(out, tmp_path, rows, 32, factory, IndexConfig(), seed=0, add_all=add_all)
    assert repr(factory) in str(e.value) and "IVF16384_HNSW32" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8", "OPQ8,IVF16_HNSW8,PQ8", "PCA16,IVF16,SQ8", "HNSW8", "Flat"])
def test_plain_ivf_and_unmerged_factories_pass_the_merge_check(factory: str) -> None:
    ann.check_mergeable(ann.make_index(factory, 32, IndexConfig()), factory)


def test_two_level_training_gives_a_working_opq_ivf_hnsw_pq_index(monkeypatch) -> None:
    """From TWO_LEVEL_MIN_NLIST lists the coarse centroids come from two-level k-means (OPQ trained
    and applied first, PQ after): the quantizer gets all nlist centroids, the index fills, and at
    nprobe = nlist (with exact re-ranking of PQ's candidates) it finds the brute-force top 10."""
    import faiss.contrib.clustering

    calls = []
    real = faiss.contrib.clustering.two_level_clustering

    def two_level_clustering(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ann, "TWO_LEVEL_MIN_NLIST", 16)
    monkeypatch.setattr(faiss.contrib.clustering, "two_level_clustering", two_level_clustering)
    x, q = clustered(3000, 32, 11), clustered(50, 32, 12)
    index = ann.make_index("OPQ8,IVF32_HNSW8,PQ8np", 32, IndexConfig(nprobe=32))  # np: no polysemous training (minutes)
    ann.train(index, x)
    assert calls == [(3000, 32)] and index.is_trained and faiss_quantizer_size(index) == 32
    index.add(x)
    assert index.ntotal == 3000

    class Rows:
        def get_rows(self, rows: np.ndarray) -> np.ndarray:
            return x[rows]

    ann.apply_search_params(index, "ivf", 32, 16)
    found = ann.search(index, q, 10, rerank=10, vectors=Rows())[1]
    assert ann.recall_at_k(found, brute(x, q, 10)[1], 10) >= 0.98


def faiss_quantizer_size(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).quantizer.ntotal)


@pytest.mark.parametrize(("nlist", "n", "expected"), [
    (16, 10**6, 100_000),           # the floor: 100k points, though 256 per list would be 4,096
    (4096, 10**6, 10**6),           # 256 per list is 1.05M: the whole corpus of 1M
    (4096, 500_000, 500_000),       # never more than n
    (16384, 10**7, 1_000_000),      # 256 per list would be 4.2M (6.4 GB at 384-d): capped at 1M
    (65536, 10**8, 39 * 65536),     # the cap gives way to 39 points per list (FAISS's k-means minimum)
])
def test_training_sample_is_bounded_whatever_the_corpus_size(nlist: int, n: int, expected: int) -> None:
    """The sharded build holds its training sample in memory (twice behind OPQ), so it must not grow with n."""
    index = ann.make_index(f"IVF{nlist},PQ8np", 32, IndexConfig())
    assert ann.train_size(index, n) == expected
    assert ann.train_size(ann.make_index("Flat", 32, IndexConfig()), n) == 0


def test_add_jobs_group_whole_consecutive_shards_of_at_least_add_rows(tmp_path: Path) -> None:
    """Small shards are added in groups, so the scratch copies of the trained index stay few; every row is in one job, in order."""
    from rag_pipeline.index.sharded import add_jobs

    jobs = add_jobs([100, 100, 100, 50, 300, 20], tmp_path, tmp_path / "s", tmp_path / "t", 250)
    assert [(len(paths), first) for _, paths, first, _ in jobs] == [(3, 0), (2, 300), (1, 650)]
    assert [Path(p).name for p in jobs[1][1]] == ["part-00003.npy", "part-00004.npy"]
    assert len({j[3] for j in jobs}) == 3 and all(j[0] == str(tmp_path / "t") for j in jobs)
    assert add_jobs([10] * 4, tmp_path, tmp_path, tmp_path / "t", 1)[3][2] == 30  # one shard per job
