"""Throughput of build-raft-dataset beside its floor: batched SentenceTransformer.encode + FAISS search.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_raft.py --index indexes/disfl_qa --qa-dir corpus/disfl_qa/qa

Both sides use the same loaded model, the same questions and the same batch size, in one process,
alternating ``--repeats`` times (best time kept, so load from other processes counts less). Model
loading and output writing are left out of both; the builder's extra work is the oracle search,
distractor sampling, targets and token counting. Goal: the builder adds at most 20%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import faiss

    from rag_pipeline import prompt as P
    from rag_pipeline.index.embed import load_embedder
    from rag_pipeline.index.format import read_manifest
    from rag_pipeline.data.raft import RaftConfig, Tally, build_rows, load_questions, load_tokenizer
    from rag_pipeline.index.retriever import Retriever

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="indexes/disfl_qa")
    ap.add_argument("--qa-dir", default="corpus/disfl_qa/qa")
    ap.add_argument("--questions", type=int, default=0, help="use the first N questions (0 = all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=RaftConfig.batch_size)
    args = ap.parse_args()

    cfg = RaftConfig(index=args.index, qa_dir=args.qa_dir, output="/dev/null", device=args.device, batch_size=args.batch_size)
    embedder = load_embedder(read_manifest(args.index)["embedder"]["id"], device=args.device)
    retriever = Retriever.load(args.index, embedder=embedder)
    tokenizer = load_tokenizer(cfg.generator)
    template = P.get_template(cfg.template)
    questions = load_questions(cfg, Tally())
    questions = questions[: args.questions or None]
    texts = [it.question for _, it in questions]
    index = faiss.read_index(f"{args.index}/index.faiss")
    embedder.encode(texts[:64])  # warm-up

    def baseline() -> None:
        for i in range(0, len(texts), cfg.batch_size):
            vecs = embedder.model.encode(texts[i : i + cfg.batch_size], batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            index.search(vecs, cfg.top_k)

    def builder() -> None:
        build_rows(cfg, retriever, tokenizer, template, questions, Tally())

    vectors = dict(zip(texts, embedder.encode(texts)))

    class Cached:  # the same vectors, looked up: what is left is the builder's own work
        def encode(self, batch: list[str], batch_size: int = 64) -> np.ndarray:
            return np.stack([vectors[t] for t in batch])

    cached = Retriever(retriever.index_dir, retriever.manifest, retriever.index, retriever.store, Cached())

    def builder_work() -> None:
        build_rows(cfg, cached, tokenizer, template, questions, Tally())

    best = {"encode+search": float("inf"), "raft builder": float("inf"), "  its own work": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("encode+search", baseline), ("raft builder", builder), ("  its own work", builder_work)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    base = best["encode+search"]
    print(f"{len(texts)} questions, batch {cfg.batch_size}, top_k {cfg.top_k}, tokenizer {cfg.generator}, best of {args.repeats}")
    print(f"{'':<16}{'seconds':>9}{'q/s':>9}{'vs encode+search':>18}")
    for name, t in best.items():
        print(f"{name:<16}{t:>9.2f}{len(texts) / t:>9.1f}{t / base:>18.1%}")
    print(f"(own work = the builder with question vectors looked up instead of computed: {best['  its own work'] / base:.1%} of encode+search)")
    print(f"goal: builder adds <= 20%: {'met' if best['  its own work'] <= 0.2 * base else 'NOT met'}")


if __name__ == "__main__":
    main()
