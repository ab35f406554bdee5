#!/usr/bin/env python3
"""Hybrid search's BM25 side: stored in the index against built in memory, beside a dense-only load.

For each corpus size, in one run:

1. a corpus is generated (seeded): documents of ``--words`` words drawn from the word frequencies
   of the bundled Disfl-QA documents (so the test questions' words occur with realistic
   frequencies), and indexed by ``build_index`` with the ``hashing:384`` embedder (the model's
   speed plays no part), in the ``sqlite`` layout up to ``--sharded-from`` chunks and the
   ``sharded`` layout from there (with the IVF-PQ recipe ``build-index`` picks above 1M chunks,
   exact re-ranking from the memory-mapped vectors); the BM25 build is also timed alone, in a
   child process;
2. three fresh processes each load the index and answer the same queries (test-split questions):
   ``dense`` (``--no-hybrid``), ``stored`` (hybrid, the BM25 stored in the index) and ``memory``
   (hybrid, BM25 built from every chunk's text on the first query, as indexes without a stored
   BM25 still do, with bm25s). Reported: the load, the first query (which builds the in-memory
   BM25), their sum, the peak resident memory (VmHWM) above what the imports took and of the
   whole process, the median warm query, and the median of the BM25 side alone (top 50);
3. the goal: a hybrid load (load + first query, and peak memory) within 10% of the dense one.

Usage (10,000 documents: a minute; 1M chunks: 16 minutes on 2 cores, mostly the build)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_bm25.py --sizes 10000 1000000 --out /tmp/bm25
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

TAG = "BENCH_BM25 "
MODES = ("dense", "stored", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000], help="documents per corpus (one chunk each)")
    p.add_argument("--words", type=int, default=50, help="words per document (one hashing:384 chunk holds 64)")
    p.add_argument("--sharded-from", type=int, default=500_000, help="corpora of this many documents or more use the sharded layout")
    p.add_argument("--queries", type=int, default=200, help="test-split questions asked (the first is the first query)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per mode; each figure is their median (a 10,000-chunk load takes ~60 ms, where one run's noise is ~10%%)")
    p.add_argument("--reuse", action="store_true", help="measure an index this script built before in --out (no build; the build columns are left out)")
    p.add_argument("--out", default="/tmp/bench_bm25", help="scratch directory for the corpora and indexes")
    p.add_argument("--child", choices=[*MODES, "build"], help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def vm(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def questions(n: int) -> list[str]:
    lines = (REPO / "corpus/disfl_qa/qa/test.jsonl").read_text().splitlines()
    return [json.loads(x)["question"] for x in lines[:n]]


def write_corpus(path: Path, n: int, words: int, seed: int) -> None:
    """``n`` documents of ``words`` words drawn by the Disfl-QA documents' word frequencies."""
    import re

    import numpy as np

    text = " ".join(json.loads(x)["text"] for x in (REPO / "corpus/disfl_qa/documents.jsonl").read_text().splitlines())
    vocab, counts = np.unique(np.array(re.findall(r"\w+", text)), return_counts=True)
    p = counts / counts.sum()
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for a in range(0, n, 10_000):
            ids = rng.choice(len(vocab), size=(min(10_000, n - a), words), p=p)
            f.writelines(json.dumps({"id": f"d{a + i}", "text": " ".join(vocab[r])}) + "\n" for i, r in enumerate(ids))


def child(args: argparse.Namespace) -> dict:
    """One fresh process: build BM25 alone, or load the index and answer the queries in one mode."""
    from rag_pipeline.index.format import read_manifest
    from rag_pipeline.index.retriever import Retriever

    base = vm("VmRSS")
    if args.child == "build":
        from rag_pipeline.index import bm25
        from rag_pipeline.index.store import open_store

        manifest = read_manifest(Path(args.index))
        store = open_store(args.index, manifest)
        out = Path(args.out) / "bm25-alone"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        section = bm25.build(out, (c.text for c in store.iter_chunks()), out / "scratch")
        return {"seconds": time.perf_counter() - t, "peak_mb": (vm("VmHWM") - base) / 2**20, "postings": section["postings"],
                "terms": section["terms"], "bytes": sum(f.stat().st_size for f in (out / "bm25").iterdir())}
    qs = questions(args.queries)
    t = time.perf_counter()
    r = Retriever.load(args.index)
    load = time.perf_counter() - t
    if args.mode_memory:
        r._bm25 = None  # the path of an index without a stored BM25
    hybrid = args.child != "dense"
    t = time.perf_counter()
    first = r.search(qs[0], args.k, hybrid=hybrid)
    first_s = time.perf_counter() - t
    warm = []
    for q in qs[1:]:
        t = time.perf_counter()
        r.search(q, args.k, hybrid=hybrid)
        warm.append(time.perf_counter() - t)
    lexical = []
    for q in qs[1:] if hybrid else []:  # the BM25 side alone (the rest of a hybrid query is the dense search and the fusion)
        t = time.perf_counter()
        r._bm25_search(q, 50)
        lexical.append(time.perf_counter() - t)
    return {"bm25_ms": 1000 * statistics.median(lexical) if lexical else None, "load": load, "first": first_s, "peak_mb": (vm("VmHWM") - base) / 2**20, "process_mb": vm("VmHWM") / 2**20,
            "warm_ms": 1000 * statistics.median(warm) if warm else 0.0, "hits": [h.chunk.id for h in first]}


def run_child(args: argparse.Namespace, mode: str, index: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--index", str(index), "--queries", str(args.queries), "--k", str(args.k), "--out", str(index.parent)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith(TAG)]
    if out.returncode or not lines:
        raise SystemExit(f"child {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(TAG):])


def one_size(args: argparse.Namespace, n: int) -> dict:
    from rag_pipeline.index.build import IndexConfig, build_index

    root = Path(args.out) / f"n{n}"
    docs = root / "docs.jsonl"
    if not docs.is_file():
        write_corpus(docs, n, args.words, args.seed)
    from rag_pipeline.index import ann

    layout = "sharded" if n >= args.sharded_from else "sqlite"
    # at scale, the recipe build-index's auto picks above 1M chunks (IVF-PQ on disk, exact re-ranking); below, auto's own choice
    scale = {"faiss_factory": ann.scale_factory(384, n, 0), "rerank": ann.SCALE_RERANK} if layout == "sharded" else {}
    if args.reuse and (root / "index" / "manifest.json").is_file():
        from rag_pipeline.index.format import read_manifest

        row = {"docs": n, "chunks": read_manifest(root / "index")["corpus"]["chunks"], "layout": layout, "build_s": None, "bm25_build": None}
    else:
        t = time.perf_counter()
        manifest = build_index(IndexConfig(paths=[str(docs)], index=str(root / "index"), embedder="hashing:384", layout=layout, **scale))
        row = {"docs": n, "chunks": manifest["corpus"]["chunks"], "layout": layout, "build_s": time.perf_counter() - t,
               "bm25_build": run_child(args, "build", root / "index")}
    for mode in MODES:
        runs = [run_child(args, mode, root / "index") for _ in range(max(1, args.repeats))]
        row[mode] = {key: (statistics.median(r[key] for r in runs) if isinstance(v, float) else v) for key, v in runs[0].items()}
    return row


def main() -> None:
    args = parse_args()
    if args.child:
        args.mode_memory = args.child == "memory"
        print(TAG + json.dumps(child(args)), flush=True)
        return
    print(f"# bench_bm25: {platform.processor() or platform.machine()}, {args.queries} queries, k={args.k}, median of {max(1, args.repeats)} fresh processes per mode")
    print("| corpus | mode | load s | first query s | load + first s | peak RSS over imports MB | process peak RSS MB | warm query ms | BM25 alone ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        row = one_size(args, n)
        name = f"{row['chunks']:,} chunks ({row['layout']})"
        for mode in MODES:
            m = row[mode]
            lexical = "-" if m["bm25_ms"] is None else f"{m['bm25_ms']:.2f}"
            print(f"| {name} | {mode} | {m['load']:.3f} | {m['first']:.3f} | {m['load'] + m['first']:.3f} | {m['peak_mb']:.0f} | {m['process_mb']:.0f} | {m['warm_ms']:.2f} | {lexical} |")
        d, s = row["dense"], row["stored"]
        b = row["bm25_build"]
        print(f"|  | stored / dense | | | {(s['load'] + s['first']) / (d['load'] + d['first']):.3f}x | {s['peak_mb'] / d['peak_mb']:.3f}x | {s['process_mb'] / d['process_mb']:.3f}x | |")
        if b is None:  # --reuse: not built here
            continue
        print(f"<!-- build-index {row['build_s']:.1f} s; of which BM25 alone {b['seconds']:.1f} s, peak {b['peak_mb']:.0f} MB, "
              f"{b['bytes'] / 2**20:.0f} MB on disk, {b['terms']:,} terms, {b['postings']:,} postings -->")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
