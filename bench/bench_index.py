#!/usr/bin/env python3
"""Index build and search speed: our pipeline against a plain sentence-transformers + FAISS loop.

In one run, on the same machine, model and chunk texts:

1. ours: ``build_index(IndexConfig(paths=[docs], index=tmp, force=True), embedder=<preloaded>)``,
   end to end (read, chunk, SQLite store, embed, FAISS, manifest): chunks/s, with a phase breakdown;
2. baseline: ``SentenceTransformer.encode(texts, batch_size=64, normalize_embeddings=True)`` and
   ``faiss.IndexFlatIP.add`` over the very chunk texts ours stored (read from its ``chunks.sqlite``);
3. the overhead of ours over the baseline (goal: <= 10%);
4. queries: ``Retriever.search_batch(questions, k=10)`` against a raw ``encode + index.search``.

Fairness: the model is loaded once and shared (its load time is excluded and printed); both sides
are warmed up once on a small slice; each measurement runs ``--repeats`` times, alternating which
side goes first, and the median is reported; both run with the same torch thread count. Peak
memory is measured per method in a child process (this script re-invoked with ``--only``) as the
peak RSS during the run minus the RSS right after the model load.

Usage (about 7 minutes on 2 CPU cores; ``--max-docs 300`` gives a 2-minute smoke run)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_index.py \\
        --docs corpus/disfl_qa/documents.jsonl --qa corpus/disfl_qa/qa/test.jsonl --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

BATCH_SIZE = 64  # IndexConfig's default embedding batch size, used by both sides
K = 10
WARMUP_DOCS = 24  # enough to run every code path once; small so warm-up costs seconds
MEM_TAG = "BENCH_MEM "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default="corpus/disfl_qa/documents.jsonl", help="documents to index (JSONL)")
    p.add_argument("--qa", default="corpus/disfl_qa/qa/test.jsonl", help="QA JSONL whose 'question' fields are the queries")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    p.add_argument("--out", default=None, help="scratch directory (default: a temporary directory, removed at the end)")
    p.add_argument("--max-docs", type=int, default=0, help="index only the first N documents (0 = all); for quick runs")
    p.add_argument("--max-queries", type=int, default=0, help="use only the first N questions (0 = all); for quick runs")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak memory in child processes")
    p.add_argument("--embedder", default=None, help="sentence-transformers model id or path (default: IndexConfig's)")
    p.add_argument("--only", choices=("ours", "baseline"), default=None, help="internal: measure one method's peak memory and exit")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both methods and the children (0 = torch's default)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    for name in ("max_docs", "max_queries", "threads"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0 (0 = all / default), got {getattr(args, name)}")
    return args


# ---------------------------------------------------------------------------------------- setup


def quiet_libraries() -> None:
    """No progress bars or info logs from the libraries: the bench prints its own lines."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def machine_facts() -> list[str]:
    import faiss
    import sentence_transformers
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine    : {platform.platform()}; {cpu}",
        f"cpus       : os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}, load average (1/5/15 min)={load}",
        f"threads    : torch.get_num_threads()={torch.get_num_threads()} (both methods), faiss omp={faiss.omp_get_max_threads()}",
        f"versions   : python {platform.python_version()}, torch {torch.__version__}, sentence-transformers "
        f"{sentence_transformers.__version__}, transformers {transformers.__version__}, faiss {faiss.__version__}, numpy {np.__version__}",
    ]


def load_embedder(model_id: str):  # -> (SentenceTransformerEmbedder, seconds)
    from rag_pipeline.index.embed import SentenceTransformerEmbedder

    t = time.perf_counter()
    emb = SentenceTransformerEmbedder(model_id, device="cpu")
    return emb, time.perf_counter() - t


def head_jsonl(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` non-empty lines of a JSONL file, written to ``dst``."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def read_chunk_texts(index_dir: Path) -> list[str]:
    """Chunk texts in FAISS row order from an index's store: the baseline embeds exactly these."""
    with sqlite3.connect(f"file:{index_dir / 'chunks.sqlite'}?mode=ro", uri=True) as db:
        return [t for (t,) in db.execute("SELECT text FROM chunks ORDER BY row")]


def read_stored_vectors(index_dir: Path, dim: int) -> np.ndarray:
    with sqlite3.connect(f"file:{index_dir / 'chunks.sqlite'}?mode=ro", uri=True) as db:
        blobs = [b for (b,) in db.execute("SELECT embedding FROM chunks ORDER BY row")]
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, dim)


def read_questions(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


# ------------------------------------------------------------------------------------- methods


class PhaseTimer:
    """Accumulates the time spent in named functions by wrapping them while active.

    Wraps module functions (``rag_pipeline.index.build._embed_all``) and instance methods (the
    embedder's ``encode``); the wrapper costs about a microsecond a call.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        had_own = name in vars(owner)
        orig = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        setattr(owner, name, timed)
        self._undo.append((owner, name, orig, had_own))

    def __enter__(self) -> PhaseTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, orig, had_own in reversed(self._undo):
            if had_own:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)  # an instance attribute shadowed the class's method


def run_ours(docs: Path, target: Path, emb) -> tuple[float, int, dict[str, float]]:
    """One end-to-end ``build_index``; returns (seconds, chunks, phase seconds)."""
    from rag_pipeline.index import build as index_mod
    from rag_pipeline.index.build import IndexConfig, build_index

    cfg = IndexConfig(paths=[str(docs)], index=str(target), force=True, device="cpu")
    with PhaseTimer() as pt:
        pt.wrap(index_mod, "_write_chunks", "write_chunks")
        pt.wrap(index_mod, "_embed_all", "embed_all")
        pt.wrap(index_mod, "_fill_index", "fill_index")
        pt.wrap(index_mod, "sha256_file", "sha256")
        pt.wrap(emb, "token_offsets", "tokenize")
        pt.wrap(emb, "encode", "encode")
        t, c = time.perf_counter(), time.process_time()
        manifest = build_index(cfg, embedder=emb)
        total = time.perf_counter() - t
        cpu = time.process_time() - c
    s = pt.seconds
    phases = {
        "read + tokenize + chunk (token_offsets)": s["tokenize"],
        "chunk bookkeeping + sha256 + SQLite inserts": s["write_chunks"] - s["tokenize"],
        "encode (SentenceTransformer.encode)": s["encode"],
        "SQLite reads/writes of embeddings": s["embed_all"] - s["encode"],
        "FAISS fill (vectors from SQLite + add)": s["fill_index"],
        "file sha256 for the manifest": s["sha256"],
        "other (fsync, write_index, manifest, rename)": total - s["write_chunks"] - s["embed_all"] - s["fill_index"] - s["sha256"],
        "cpu": cpu,
    }
    return total, int(manifest["corpus"]["chunks"]), phases


def run_baseline(model, texts: list[str]):  # -> (seconds, faiss.IndexFlatIP, phase seconds)
    """The plain loop: encode all texts, add them to an exact inner-product index."""
    import faiss

    t, c = time.perf_counter(), time.process_time()
    vecs = model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    t_enc = time.perf_counter()
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    t_end = time.perf_counter()
    return t_end - t, index, {"encode": t_enc - t, "faiss add": t_end - t_enc, "cpu": time.process_time() - c}


def run_search_ours(retriever, questions: list[str]) -> tuple[float, list[list[int]], float]:
    """``search_batch`` over all questions; returns (seconds, top-k rows per query, encode seconds).

    The retriever's own timings split the time into query embedding, FAISS search and chunk reads
    (kept in ``LAST_TIMINGS`` for the report).
    """
    from rag_pipeline.index.ann import SearchTimings

    tm = SearchTimings()
    t = time.perf_counter()
    hits = retriever.search_batch(questions, k=K, timings=tm)
    total = time.perf_counter() - t
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update(embed=tm.embed, faiss=tm.faiss, rerank=tm.rerank, fetch=tm.fetch)
    return total, [[h.chunk.row for h in hs] for hs in hits], tm.embed


LAST_TIMINGS: dict[str, float] = {}


def run_search_raw(model, index, questions: list[str]) -> tuple[float, np.ndarray, float]:
    t = time.perf_counter()
    q = model.encode(questions, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    t_enc = time.perf_counter()
    _, ids = index.search(q, K)
    return time.perf_counter() - t, ids, t_enc - t


# ------------------------------------------------------------------------------------ memory


def _vm_status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm_status("VmHWM") <= _vm_status("VmRSS") + (1 << 20)
    except (OSError, RuntimeError):
        return False


def child_memory(args: argparse.Namespace) -> None:
    """``--only METHOD``: load the model, run the method once, print peak RSS over the post-load RSS."""
    import psutil
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    emb, _ = load_embedder(args.embedder)
    texts = read_chunk_texts(out / "ours") if args.only == "baseline" else []  # input data, loaded before the mark
    gc.collect()
    after_load = psutil.Process().memory_info().rss
    precise = reset_peak_rss()
    if args.only == "ours":
        run_ours(Path(args.docs), out / "mem_ours", emb)
    else:
        run_baseline(emb.model, texts)
    peak = _vm_status("VmHWM") if precise else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    how = "VmHWM reset after load" if precise else "ru_maxrss (includes the model-load peak)"
    print(MEM_TAG + json.dumps({"after_load": after_load, "peak": peak, "how": how, "threads": torch.get_num_threads()}))


def measure_memory(method: Literal["ours", "baseline"], args: argparse.Namespace, docs: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", method, "--docs", str(docs), "--out", str(out),
           "--threads", str(threads), "--embedder", args.embedder]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MEM_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory child for {method} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(MEM_TAG):])


# -------------------------------------------------------------------------------------- main


def _alternate(repeats: int, first: Callable[[], None], second: Callable[[], None], log: Callable[[int, bool], None]) -> None:
    """Run the pair ``repeats`` times, swapping which goes first each round (ABBA), so drift cancels."""
    for r in range(repeats):
        order = (first, second) if r % 2 == 0 else (second, first)
        for fn in order:
            fn()
        log(r, r % 2 == 0)


def _mib(b: float) -> float:
    return b / (1 << 20)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # same tokenizer threading in parent and children
    from rag_pipeline.index.build import IndexConfig

    args.embedder = args.embedder or IndexConfig().embedder
    quiet_libraries()
    if args.only:
        child_memory(args)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    own_out = args.out is None
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_index_"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, out, torch.get_num_threads())
    finally:
        if own_out:
            shutil.rmtree(out, ignore_errors=True)


def bench(args: argparse.Namespace, out: Path, threads: int) -> None:
    from rag_pipeline.index.retriever import Retriever

    t_start = time.perf_counter()
    print("== machine")
    for line in machine_facts():
        print(line)
    docs = Path(args.docs)
    if args.max_docs:
        docs = head_jsonl(docs, out / "docs_subset.jsonl", args.max_docs)
    questions = read_questions(Path(args.qa))
    questions = questions[: args.max_queries] if args.max_queries else questions

    emb, load_s = load_embedder(args.embedder)
    model = emb.model
    print(f"model      : {args.embedder} ({emb.dim}-d, max {emb.max_tokens} tokens), loaded once in {load_s:.1f} s "
          "and shared by both methods; load time excluded from every number below")

    # Warm-up: every code path once, on a small slice (first-call allocations, lazy imports).
    warm = out / "warm_index"
    run_ours(head_jsonl(Path(args.docs), out / "warm.jsonl", WARMUP_DOCS), warm, emb)
    _, warm_flat, _ = run_baseline(model, read_chunk_texts(warm))
    warm_ret = Retriever.load(warm, embedder=emb)
    run_search_ours(warm_ret, questions[:32])
    run_search_raw(model, warm_flat, questions[:32])
    print(f"warm-up    : {WARMUP_DOCS} documents through both build paths and 32 queries through both search paths")

    # Build: ours first in round 0 (its store supplies the baseline's texts), then alternating.
    target = out / "ours"
    ours_t: list[float] = []
    base_t: list[float] = []
    ours_phases: list[dict[str, float]] = []
    base_phases: list[dict[str, float]] = []
    state: dict[str, Any] = {}

    def ours() -> None:
        t, n, ph = run_ours(docs, target, emb)
        ours_t.append(t)
        ours_phases.append(ph)
        state["n"] = n
        if "texts" not in state:
            state["texts"] = read_chunk_texts(target)

    def baseline() -> None:
        t, flat, ph = run_baseline(model, state["texts"])
        base_t.append(t)
        base_phases.append(ph)
        state["flat"] = flat

    print(f"\n== build ({args.repeats} rounds, order alternates each round)")
    _alternate(args.repeats, ours, baseline, lambda r, of: print(
        f"round {r + 1} ({'ours first' if of else 'baseline first'}): ours {ours_t[-1]:.2f} s, baseline {base_t[-1]:.2f} s, "
        f"overhead {100 * (ours_t[-1] / base_t[-1] - 1):+.1f}%", flush=True))
    n = state["n"]
    texts = state["texts"]
    n_tokens = sum(len(emb.token_offsets(t)) for t in texts)
    print(f"corpus     : {docs} -> {n} chunks, {n_tokens / n:.0f} tokens per chunk on average (chunk size {emb.max_tokens}, overlap 32)")

    # Sanity: both sides embedded the same texts to the same vectors.
    ours_vecs = read_stored_vectors(target, emb.dim)
    base_vecs = state["flat"].reconstruct_n(0, state["flat"].ntotal)
    print(f"same input : {len(texts)} texts both sides; max |ours - baseline| vector difference {np.abs(ours_vecs - base_vecs).max():.2e}")

    ours_med, base_med = statistics.median(ours_t), statistics.median(base_t)
    overhead = 100 * (ours_med / base_med - 1)
    print("\nphases of ours (median over rounds, seconds):")
    for name in [k for k in ours_phases[0] if k != "cpu"]:
        v = statistics.median(p[name] for p in ours_phases)
        print(f"  {name:<46} {v:8.3f}  {100 * v / ours_med:5.1f}%")
    print("phases of baseline (median, seconds):")
    for name in [k for k in base_phases[0] if k != "cpu"]:
        v = statistics.median(p[name] for p in base_phases)
        print(f"  {name:<46} {v:8.3f}  {100 * v / base_med:5.1f}%")
    # The encode call is identical on both sides, so what ours adds is everything outside it; measured
    # inside each run, this is far less sensitive to other load on the machine than total-vs-total.
    outside = statistics.median(t - p["encode (SentenceTransformer.encode)"] for t, p in zip(ours_t, ours_phases))
    ours_cpu = statistics.median(p["cpu"] for p in ours_phases)
    base_cpu = statistics.median(p["cpu"] for p in base_phases)
    print(f"ours outside encode: {outside:.3f} s = {100 * outside / base_med:.1f}% of the baseline's median time")
    print(f"process CPU time (median): ours {ours_cpu:.2f} s, baseline {base_cpu:.2f} s ({100 * (ours_cpu / base_cpu - 1):+.1f}%); "
          f"CPU/wall {ours_cpu / ours_med:.2f} and {base_cpu / base_med:.2f} of {threads} threads (well below {threads} = machine busy)")

    # Queries: one batch of all questions, k=10, both against an exact flat index of the same vectors.
    retriever = Retriever.load(target, embedder=emb)
    q_ours: list[float] = []
    q_raw: list[float] = []
    q_state: dict[str, Any] = {}

    def search_ours() -> None:
        t, rows, enc = run_search_ours(retriever, questions)
        q_ours.append(t)
        q_state.update(rows=rows, enc_ours=enc)

    def search_raw() -> None:
        t, ids, enc = run_search_raw(model, state["flat"], questions)
        q_raw.append(t)
        q_state.update(ids=ids, enc_raw=enc)

    print(f"\n== queries ({len(questions)} questions from {args.qa} in one batch, k={K}; {args.repeats} rounds, alternating)")
    _alternate(args.repeats, search_ours, search_raw, lambda r, of: print(
        f"round {r + 1}: search_batch {q_ours[-1]:.3f} s, raw encode+search {q_raw[-1]:.3f} s", flush=True))
    same = np.mean([rows == list(ids) for rows, ids in zip(q_state["rows"], q_state["ids"].tolist())])
    print(f"same result: {100 * same:.1f}% of queries get the identical top-{K} from both; "
          f"encode share: ours {q_state['enc_ours']:.3f} s, raw {q_state['enc_raw']:.3f} s (last round)")
    print(f"ours apart : query embedding {LAST_TIMINGS['embed']:.3f} s, FAISS search {LAST_TIMINGS['faiss']:.4f} s "
          f"({len(questions) / max(LAST_TIMINGS['faiss'], 1e-9):.0f} q/s), re-rank {LAST_TIMINGS['rerank']:.4f} s, chunk reads {LAST_TIMINGS['fetch']:.3f} s (last round)")
    qo_med, qr_med = statistics.median(q_ours), statistics.median(q_raw)

    mem: dict[str, dict] = {}
    if args.memory:
        print("\n== peak memory (one child process per method, full run, model loaded in the child first)")
        for method in ("ours", "baseline"):
            mem[method] = measure_memory(method, args, docs, out, threads)
            m = mem[method]
            print(f"{method:<9}: RSS after model load {_mib(m['after_load']):.0f} MiB, peak {_mib(m['peak']):.0f} MiB, "
                  f"delta {_mib(m['peak'] - m['after_load']):+.0f} MiB ({m['how']}, {m['threads']} threads)", flush=True)

    def mem_cell(method: str) -> str:
        return f"{_mib(mem[method]['peak'] - mem[method]['after_load']):+.0f}" if method in mem else "n/a"

    verdict = "meets" if overhead <= 10 else "MISSES"
    print(f"\n== result: ours is {overhead:+.1f}% slower than the raw encode + IndexFlatIP loop ({verdict} the <= 10% goal); "
          f"outside encode it adds {100 * outside / base_med:.1f}%; load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"total bench time {time.perf_counter() - t_start:.0f} s\n")
    print(f"Index build and search, {n} chunks / {len(questions)} queries (`bench/bench_index.py`, "
          f"{len(os.sched_getaffinity(0))} CPU cores, {threads} torch threads, median of {args.repeats} alternating runs, "
          f"model load excluded, memory = peak RSS over RSS after model load):\n")
    print("| Method | Median time (s) | Throughput | Peak memory delta (MiB) |")
    print("|---|---:|---:|---:|")
    print(f"| `build_index` (ours, end to end) | {ours_med:.2f} | {n / ours_med:.1f} chunks/s | {mem_cell('ours')} |")
    print(f"| `encode` + `IndexFlatIP.add` (baseline) | {base_med:.2f} | {n / base_med:.1f} chunks/s | {mem_cell('baseline')} |")
    print(f"| Overhead of ours (goal <= 10%) | {overhead:+.1f}% (outside encode: {100 * outside / base_med:+.1f}%) | | |")
    print(f"| `search_batch`, k={K} (ours) | {qo_med:.3f} | {len(questions) / qo_med:.0f} queries/s | |")
    print(f"| `encode` + `IndexFlatIP.search`, k={K} (raw) | {qr_med:.3f} | {len(questions) / qr_med:.0f} queries/s | |")


if __name__ == "__main__":
    main()
