#!/usr/bin/env python3
"""Index at scale: the sharded IVF-PQ build and search at 1M and 10M vectors, against baselines.

Embeddings are synthetic, so the model's speed plays no part: seeded, clustered, 384-d, unit-norm
(a mixture of 4,096 Gaussian clusters whose noise spectrum decays like real sentence embeddings',
about 26 effective dimensions), generated shard by shard from the seed, never all in memory.

For each size N, in one run:

1. the vectors are written as the sharded layout's ``.npy`` shards (``--shard-rows`` each);
2. build (in a child process, so its peak RSS is its own): ``sharded.build_faiss``, the code of
   ``build-index --layout sharded``: train once on a seeded sample, add each shard to a copy of
   the trained empty index, merge on disk. Reported: time, peak RSS (VmHWM), index bytes;
3. ground truth: exact top-10 of ``--queries`` held-out queries (drawn from the same distribution,
   not in the corpus), streamed shard by shard; its speed is the **exact-search baseline** (q/s);
4. ``nprobe`` is chosen by ``ann.tune`` on 1,000 of the corpus's own vectors as queries (the
   ``--target-recall`` helper of ``build-index``), then Recall@10 is measured on the held-out
   queries at that ``nprobe``: with and without re-ranking the top 10*R candidates by exact inner
   product read from the memory-mapped shards. **Recall@10 = |top-10 found ∩ exact top-10| / 10**,
   averaged over queries;
5. search throughput: all held-out queries in one batch, k=10, median of ``--repeats``; FAISS time
   and re-rank time apart (no query embedding: the queries are vectors);
6. with ``--baseline-build-max`` >= N: a non-sharded build (all vectors in memory, one ``add``) in
   a child process, for build time and peak RSS beside ours.

``--real-model`` adds a small real run on the bundled corpus: ``build_index`` with MiniLM, the
default engine beside ``--engine ray`` with 1 and 2 workers, chunks/s each (model load excluded
for the default engine; each Ray run includes its workers' model loads, as a real build does).

Usage (1M: about 15 minutes on 2 idle cores; 10M: about 45, see the README)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_scale.py --sizes 1000000 --out /tmp/scale
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_scale.py --sizes 10000000 --out /tmp/scale --baseline-build-max 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

DIM = 384
CENTERS = 4096
SPREAD = 0.6  # noise norm relative to a centre's (~1): neighbours are mostly, not only, in the same cluster
K = 10
TAG = "BENCH_SCALE "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000", help="comma-separated corpus sizes, e.g. 1000000,10000000")
    p.add_argument("--out", default=None, help="scratch directory (vectors and indexes; 10M needs ~17 GB); default: a temporary one, removed")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory's vectors and indexes")
    p.add_argument("--shard-rows", type=int, default=65536, help="vectors per shard")
    p.add_argument("--factory", default="auto", help="FAISS factory string; auto: build-index's own above 1M chunks (ann.scale_factory), "
                   "OPQ64,IVF{nlist}_HNSW32,PQ64np with nlist 4096 up to 2M, 16384 above")
    p.add_argument("--rerank", type=int, default=20, help="re-rank the top k*R candidates by exact inner product (0 = PQ distances only; "
                   "20 = build-index's own above 1M chunks, ann.SCALE_RERANK)")
    p.add_argument("--target-recall", type=float, default=0.9, help="nprobe is the smallest reaching this on the corpus's own vectors")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--max-nprobe", type=int, default=2048, help="the tuning helper tries nprobe up to this (an exhaustive scan at 10M takes long)")
    p.add_argument("--sweep-nprobe", default="", help="also measure these nprobe values (comma-separated) on the held-out queries, "
                   "each with every --sweep-rerank: the recall / speed trade-off beside the tuned setting")
    p.add_argument("--sweep-rerank", default="0,10,20", help="re-rank factors R of the sweep (0 = PQ distances only)")
    p.add_argument("--compare", action="append", default=[], metavar="FACTORY",
                   help="also build this factory (repeatable; e.g. a fast-scan 'OPQ64,IVF4096_HNSW32,PQ64x4fs', which the "
                        "on-disk merge cannot take) in memory, not sharded, and sweep it over the same grid")
    p.add_argument("--reuse-index", action="store_true", help="search the index an earlier --keep run left in --out instead of "
                   "building it again (no build figures; for --sweep-nprobe / --compare runs)")
    p.add_argument("--repeats", type=int, default=3, help="timed search runs; the median is reported")
    p.add_argument("--threads", type=int, default=0, help="FAISS (OpenMP) threads; 0 = all cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread", type=float, default=SPREAD, help="noise norm relative to a cluster centre's: larger is harder for PQ")
    p.add_argument("--centers", type=int, default=CENTERS, help="clusters of the synthetic mixture")
    p.add_argument("--baseline-build-max", type=int, default=2_000_000, help="also build non-sharded (all in memory) up to this size")
    p.add_argument("--real-model", action="store_true", help="also the real-model run on the bundled corpus (default vs Ray, 1 and 2 workers)")
    p.add_argument("--ray-shard-size", type=int, default=128, help="real-model run: rows per shard (several shards, so 2 workers share them)")
    p.add_argument("--child", choices=("build", "baseline"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size_list = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    if not args.size_list or min(args.size_list) < 10_000:
        p.error(f"--sizes must list sizes of at least 10000, got {args.sizes!r}")
    return args


# ------------------------------------------------------------------------------------ synthetic data


def centres(seed: int) -> np.ndarray:
    return (np.random.default_rng([seed, 1]).standard_normal((CENTERS, DIM)) / np.sqrt(DIM)).astype(np.float32)


def spectrum() -> np.ndarray:
    s = 1.0 / np.sqrt(1.0 + np.arange(DIM))
    return (SPREAD * s / np.linalg.norm(s)).astype(np.float32)


def synthetic(n: int, seed: int, stream: int, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``n`` unit vectors of stream ``stream`` (a shard's number; queries use a stream of their own)."""
    rng = np.random.default_rng([seed, 2, stream])
    x = c[rng.integers(0, CENTERS, n)] + rng.standard_normal((n, DIM), dtype=np.float32) * s
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_vectors(root: Path, n: int, shard_rows: int, seed: int) -> list[int]:
    """The corpus as ``shards/part-NNNNN.npy`` (one shard in memory at a time); reused when present."""
    rows = [min(shard_rows, n - a) for a in range(0, n, shard_rows)]
    (root / "shards").mkdir(parents=True, exist_ok=True)
    done = root / "vectors.json"
    made = {"n": n, "shard_rows": shard_rows, "seed": seed, "spread": SPREAD, "centers": CENTERS}
    if done.is_file() and json.loads(done.read_text()) == made:
        return rows
    c, s = centres(seed), spectrum()
    for i, r in enumerate(rows):
        np.save(root / "shards" / f"part-{i:05d}.npy", synthetic(r, seed, i, c, s))
    done.write_text(json.dumps(made))
    return rows


def factory_for(n: int, spec: str) -> str:
    """``--factory``, or with auto the index ``build-index --index-type auto`` builds above 1M chunks."""
    from rag_pipeline.index.ann import scale_factory

    return spec if spec != "auto" else scale_factory(DIM, n)


# ---------------------------------------------------------------------------------------- memory


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def gib(b: float) -> str:
    return f"{b / (1 << 30):.2f} GiB"


# ---------------------------------------------------------------------------------------- children


def params(args: argparse.Namespace):
    from rag_pipeline.index.build import IndexConfig

    return IndexConfig(nprobe=16, ef_search=64)


def child_build(args: argparse.Namespace) -> dict:
    """Our sharded build of the size-``n`` vectors in ``args.out``; prints time and peak RSS."""
    from rag_pipeline.index.sharded import LocalRunner, build_faiss

    root = Path(args.out) / f"n{args.n}"
    rows = json.loads((root / "rows.json").read_text())
    for f in ("index.faiss", "index.ivfdata", "build.json"):
        (root / f).unlink(missing_ok=True)
    scratch = root / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    t = time.perf_counter()
    index = build_faiss(root, scratch, rows, DIM, factory_for(args.n, args.factory), params(args), args.seed, LocalRunner(None, 64).add)
    seconds = time.perf_counter() - t
    shutil.rmtree(scratch)
    (root / "build.json").write_text(json.dumps(build_record(root, args.n, args.factory)))  # what --reuse-index checks
    return {"seconds": seconds, "peak_rss": vm("VmHWM"), "ntotal": int(index.ntotal),
            "bytes": sum((root / f).stat().st_size for f in ("index.faiss", "index.ivfdata") if (root / f).exists())}


def build_record(root: Path, n: int, factory: str) -> dict:
    """What an index in ``root`` was built from: its factory and the vectors' parameters."""
    return {"factory": factory_for(n, factory), "vectors": json.loads((root / "vectors.json").read_text())}


def child_baseline(args: argparse.Namespace) -> dict:
    """The non-sharded build: every vector loaded, one ``train`` and one ``add`` into an in-memory index."""
    from rag_pipeline.index import ann as ann

    root = Path(args.out) / f"n{args.n}"
    rows = json.loads((root / "rows.json").read_text())
    t = time.perf_counter()
    x = np.concatenate([np.load(root / "shards" / f"part-{i:05d}.npy") for i in range(len(rows))])
    index = ann.make_index(factory_for(args.n, args.factory), DIM, params(args))
    ann.train(index, x[ann.sample_rows(len(x), ann.train_size(index, len(x)), args.seed)])
    index.add(x)
    return {"seconds": time.perf_counter() - t, "peak_rss": vm("VmHWM"), "ntotal": int(index.ntotal)}


def run_child(kind: str, args: argparse.Namespace, n: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--n", str(n), "--out", str(args.out),
           "--factory", args.factory, "--seed", str(args.seed), "--threads", str(args.threads), "--spread", str(args.spread),
           "--centers", str(args.centers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} child for {n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(TAG):])


# ---------------------------------------------------------------------------------------- search


def measure_search(args: argparse.Namespace, n: int, rows: list[int]) -> dict:
    from rag_pipeline.index import ann as ann
    from rag_pipeline.index.format import read_faiss_index
    from rag_pipeline.index.store import ShardVectors

    root = Path(args.out) / f"n{n}"
    reset_peak()
    vectors = ShardVectors(root, rows, DIM)
    queries = synthetic(args.queries, args.seed, 10**9, centres(args.seed), spectrum())  # a stream no shard uses
    t = time.perf_counter()
    _, truth = ann.exact_topk(queries, vectors.iter_shards(), K)
    exact_s = time.perf_counter() - t

    index = read_faiss_index(root, on_disk=True)
    kind = ann.kind_of(index)
    sample = ann.sample_rows(n, 1000, args.seed + 1)
    own = vectors.get_rows(sample)
    _, own_truth = ann.exact_topk(own, vectors.iter_shards(), K, exclude=sample)

    def own_found() -> np.ndarray:
        _, ids = ann.search(index, own, K + 1, args.rerank, vectors)
        return np.array([[i for i in row if i != r][:K] for row, r in zip(ids.tolist(), sample.tolist())])

    tuning = ann.tune(index, kind, own_truth, own_found, args.target_recall, K, ef_search=64, max_value=args.max_nprobe)
    out = {"exact_s": exact_s, "nprobe": tuning.value, "tuning": tuning.to_dict(), "nlist": ann.nlist_of(index)}
    for label, rerank in (("pq", 0), ("rerank", args.rerank)):
        if label == "rerank" and rerank <= 1:
            continue
        times, timings = [], []
        for _ in range(args.repeats):
            tm = ann.SearchTimings()
            t = time.perf_counter()
            _, ids = ann.search(index, queries, K, rerank, vectors, tm)
            times.append(time.perf_counter() - t)
            timings.append(tm)
        med = statistics.median(times)
        out[label] = {"recall": ann.recall_at_k(ids, truth, K), "seconds": med, "qps": len(queries) / med,
                      "faiss_qps": len(queries) / statistics.median(t.faiss for t in timings),
                      "rerank_s": statistics.median(t.rerank for t in timings)}
    out["sweep"] = sweep(args, index, kind, queries, truth, vectors)
    ann.apply_search_params(index, kind, tuning.value, 64)
    out["peak_rss"], out["rss_anon"], out["rss_file"] = vm("VmHWM"), vm("RssAnon"), vm("RssFile")  # mapped shard pages are page cache
    del index
    out["compare"] = [compare(args, factory, n, queries, truth, vectors) for factory in args.compare]
    return out


def compare(args: argparse.Namespace, factory: str, n: int, queries: np.ndarray, truth: np.ndarray, vectors) -> dict:
    """``--compare``: ``factory`` trained on the same sample size and filled shard by shard in memory
    (one process, not sharded), then swept over the same (nprobe, R) grid."""
    from rag_pipeline.index import ann as ann

    index = ann.make_index(factory, DIM, params(args))
    t = time.perf_counter()
    ann.train(index, vectors.get_rows(ann.sample_rows(n, ann.train_size(index, n), args.seed)))
    for _, part in vectors.iter_shards():
        index.add(np.ascontiguousarray(part))
    seconds = time.perf_counter() - t
    print(f"compare    : {factory} built in memory in {seconds:.0f} s", flush=True)
    return {"factory": factory, "seconds": seconds, "sweep": sweep(args, index, ann.kind_of(index), queries, truth, vectors, factory)}


def sweep(args: argparse.Namespace, index, kind: str, queries: np.ndarray, truth: np.ndarray, vectors, label: str = "") -> list[dict]:
    """Recall@10 and q/s of the held-out queries at each (nprobe, R) of ``--sweep-nprobe`` x ``--sweep-rerank``
    (one timed batch of all the queries each; the tuned measurement before has warmed the caches)."""
    from rag_pipeline.index import ann as ann

    points = []
    for nprobe in [int(v) for v in args.sweep_nprobe.split(",") if v.strip()]:
        ann.apply_search_params(index, kind, nprobe, 64)
        for rerank in [int(v) for v in args.sweep_rerank.split(",") if v.strip()]:
            tm = ann.SearchTimings()
            t = time.perf_counter()
            _, ids = ann.search(index, queries, K, rerank, vectors, tm)
            seconds = time.perf_counter() - t
            p = {"nprobe": nprobe, "rerank": rerank, "recall": ann.recall_at_k(ids, truth, K), "qps": len(queries) / seconds,
                 "faiss_qps": len(queries) / tm.faiss, "rerank_s": tm.rerank}
            points.append(p)
            print(f"sweep      : {label + ' ' if label else ''}nprobe {nprobe:>5} R {rerank:>3}: Recall@{K} {p['recall']:.3f}; {p['qps']:.0f} q/s "
                  f"({p['faiss_qps']:.0f} q/s in FAISS, re-rank {p['rerank_s']:.2f} s)", flush=True)
    return points


# ---------------------------------------------------------------------------------------- real model


def real_model_run(args: argparse.Namespace, out: Path) -> list[tuple[str, int, float]]:
    """The bundled corpus with MiniLM: default engine, then Ray with 1 and 2 workers."""
    from rag_pipeline.index.embed import SentenceTransformerEmbedder
    from rag_pipeline.index.build import IndexConfig, build_index

    docs = str(REPO / "corpus" / "disfl_qa" / "documents.jsonl")
    emb = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    results = []
    runs = [("default engine (in-process)", dict(engine="local"), 1)]
    runs += [(f"--engine ray, {w} worker{'s' * (w > 1)}", dict(engine="ray", workers=w, worker_cpus=max(1, os.cpu_count() // w),
                                                               ray_num_cpus=os.cpu_count(), ray_object_store_mb=512), w) for w in (1, 2)]
    for label, kw, workers in runs:
        t = time.perf_counter()
        m = build_index(IndexConfig(paths=[docs], index=str(out / f"real-{kw['engine']}-{workers}"), device="cpu", force=True,
                                    shard_size=args.ray_shard_size, **kw), embedder=emb)
        seconds = time.perf_counter() - t
        results.append((label, m["corpus"]["chunks"], seconds))
        print(f"  {label}: {m['corpus']['chunks']} chunks in {seconds:.1f} s = {m['corpus']['chunks'] / seconds:.1f} chunks/s", flush=True)
    return results


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    global SPREAD, CENTERS
    args = parse_args()
    SPREAD, CENTERS = args.spread, args.centers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.child:
        result = child_build(args) if args.child == "build" else child_baseline(args)
        print(TAG + json.dumps(result), flush=True)
        return
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    own_out = args.out is None
    args.out = Path(args.out or tempfile.mkdtemp(prefix="bench_scale_"))
    args.out.mkdir(parents=True, exist_ok=True)
    print("== machine")
    print(f"{platform.platform()}; cpus {len(os.sched_getaffinity(0))}; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Recall@{K} = |top-{K} found ∩ exact top-{K}| / {K}, averaged over {args.queries} held-out queries (not in the corpus)")
    print(f"synthetic  : {CENTERS} clusters, noise spread {SPREAD}, seed {args.seed}\n", flush=True)
    table = []
    try:
        for n in args.size_list:
            table.append(one_size(args, n))
        real = real_model_run(args, args.out) if args.real_model else []
    finally:
        if own_out and not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    print_tables(args, table, real)


def one_size(args: argparse.Namespace, n: int) -> dict:
    root = args.out / f"n{n}"
    print(f"== {n:,} vectors ({factory_for(n, args.factory)}, shards of {args.shard_rows:,})", flush=True)
    t = time.perf_counter()
    rows = write_vectors(root, n, args.shard_rows, args.seed)
    (root / "rows.json").write_text(json.dumps(rows))
    print(f"vectors    : {len(rows)} shards written in {time.perf_counter() - t:.0f} s ({gib(n * DIM * 4)} on disk)", flush=True)
    kept = root / "build.json"
    if args.reuse_index and (root / "index.faiss").is_file() and kept.is_file() and json.loads(kept.read_text()) == build_record(root, n, args.factory):
        build = None
        print(f"build      : the index an earlier run kept in {root} (--reuse-index)", flush=True)
    else:
        if args.reuse_index:
            print(f"build      : no kept index of this factory and these vectors in {root}: building it", flush=True)
        build = run_child("build", args, n)
        print(f"build      : {build['seconds']:.0f} s, peak RSS {gib(build['peak_rss'])}, index {gib(build['bytes'])} (sharded, merged on disk)", flush=True)
    base = run_child("baseline", args, n) if n <= args.baseline_build_max else None
    if base:
        print(f"baseline   : {base['seconds']:.0f} s, peak RSS {gib(base['peak_rss'])} (non-sharded: all vectors in memory, one add)", flush=True)
    s = measure_search(args, n, rows)
    print(f"exact      : {args.queries / s['exact_s']:.1f} q/s (streaming brute force over the shards: the ground truth, and the baseline)")
    print(f"nprobe     : {s['nprobe']} of {s['nlist']} (smallest reaching Recall@{K} {args.target_recall} on 1,000 corpus vectors: {s['tuning']['tried']})")
    for label in ("pq", "rerank"):
        if label in s:
            r = s[label]
            print(f"{label:<11}: Recall@{K} {r['recall']:.3f}; {r['qps']:.0f} q/s ({r['faiss_qps']:.0f} q/s in FAISS, re-rank {r['rerank_s']:.2f} s)", flush=True)
    print(f"search RSS : peak {gib(s['peak_rss'])}; at the end {gib(s['rss_anon'])} anonymous + {gib(s['rss_file'])} mapped files "
          "(the shards' pages re-ranking touched: page cache the kernel can reclaim)\n", flush=True)
    if not args.keep:
        for f in ("index.faiss", "index.ivfdata", "build.json"):
            (root / f).unlink(missing_ok=True)
    return {"n": n, "build": build, "base": base, "search": s}


def print_tables(args: argparse.Namespace, table: list[dict], real: list[tuple[str, int, float]]) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"Sharded IVF-PQ at scale (`bench/bench_scale.py`, synthetic 384-d unit vectors, {cores} cores, "
          f"{args.queries} held-out queries, k={K}, re-rank R={args.rerank}):\n")
    print("| vectors | index | build | peak RSS (build) | index size | nprobe | Recall@10 PQ only | Recall@10 re-ranked | search q/s (FAISS only) | exact search q/s (baseline) | non-sharded build (baseline) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in table:
        b, s, base = row["build"], row["search"], row["base"]
        rr = s.get("rerank", s["pq"])
        base_cell = f"{base['seconds'] / 60:.1f} min, {gib(base['peak_rss'])}" if base else "not run"
        built = f"{b['seconds'] / 60:.1f} min | {gib(b['peak_rss'])} | {gib(b['bytes'])}" if b else "reused | | "
        print(f"| {row['n']:,} | `{factory_for(row['n'], args.factory)}` | {built} | "
              f"{s['nprobe']} | {s['pq']['recall']:.3f} | {rr['recall']:.3f} | {rr['qps']:.0f} ({rr['faiss_qps']:.0f}) | "
              f"{args.queries / s['exact_s']:.1f} | {base_cell} |")
    for row in table:
        runs = [(factory_for(row["n"], args.factory), "sharded build", row["search"].get("sweep"))]
        runs += [(c["factory"], f"in memory, built in {c['seconds'] / 60:.1f} min", c["sweep"]) for c in row["search"].get("compare", [])]
        if not any(points for _, _, points in runs):
            continue
        print(f"\nRecall / speed trade-off at {row['n']:,} vectors (held-out queries, one batch each):\n")
        print("| index | nprobe | R | Recall@10 | q/s | q/s in FAISS |")
        print("|---|---:|---:|---:|---:|---:|")
        for factory, how, points in runs:
            for p in points or []:
                print(f"| `{factory}` ({how}) | {p['nprobe']} | {p['rerank']} | {p['recall']:.3f} | {p['qps']:.0f} | {p['faiss_qps']:.0f} |")
    if real:
        print("\nReal model (all-MiniLM-L6-v2) on the bundled corpus, same run:\n")
        print("| engine | chunks | seconds | chunks/s |")
        print("|---|---:|---:|---:|")
        for label, chunks, seconds in real:
            print(f"| {label} | {chunks} | {seconds:.1f} | {chunks / seconds:.1f} |")


if __name__ == "__main__":
    main()
