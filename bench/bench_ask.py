#!/usr/bin/env python3
"""``ask`` speed: cold start, warm per-question latency by stage, and batch vs one-at-a-time throughput.

In one run, on the real packaged models (MiniLM embedder, SmolLM2-135M-Instruct generator with the
adapter ``ask`` would choose, or ``--no-adapter``) and the bundled test split:

1. cold start: ``python -m rag_pipeline.cli ask QUESTION --json`` in a fresh process, from process
   start to its answer (imports, index and model loads, one answer); also ``ask --help``;
2. warm latency: ``Pipeline.answer(q)`` one question at a time after one warm-up answer, split into
   retrieval / prompt / generation (medians), with the number of generated tokens;
3. throughput: the same questions through ``Pipeline.answer_batch`` (the ``--questions`` path)
   beside the one-at-a-time loop of step 2, questions/s each and the speedup; the greedy answers of
   both paths are compared. Each path runs ``--repeats`` times, the order alternating, and the
   fastest run is reported, with its process CPU time (less sensitive to a busy machine).

Goals on 2 CPU cores: warm latency < 1 s for a short answer; batch >= 3x one-at-a-time.

``--scores`` instead prints the distribution of the best retrieval score of answerable,
unanswerable and off-topic questions (dev split + a built-in off-topic list) and the share of each
that ``min_score`` thresholds would abstain on, alone and with ``min_score_words`` (the question's
words missing from the passages too): the evidence behind ``min_score`` and ``min_score_words``.
``--scores-generator`` adds the off-topic questions asked of the generator with the threshold off: the share refused
by the threshold or by the generator behind it.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ask.py --no-adapter --questions 16
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ask.py --scores --scores-generator --adapter adapters/smollm2-disfl-qa
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

# Questions no document of the bundled corpus (SQuAD paragraphs) answers: everyday, personal,
# technical and news topics. Used only to measure the retrieval scores of off-topic questions.
OFF_TOPIC = [
    "How do I reset my router password?", "What is a good recipe for banana bread?",
    "How many grams of sugar are in a can of cola?", "Who won the 2022 FIFA World Cup final?",
    "What is the best way to learn to play the ukulele?", "How do I change a flat bicycle tyre?",
    "What time does the pharmacy close on Sundays?", "How do I fix a segmentation fault in C?",
    "What does the Rust borrow checker do?", "How do I center a div in CSS?",
    "Which smartphone has the best camera this year?", "How long should I boil an egg for a soft yolk?",
    "What is my horoscope for tomorrow?", "How do I train a puppy to sit?",
    "What are the lyrics of Bohemian Rhapsody?", "How do I make cold brew coffee at home?",
    "What is the price of bitcoin today?", "How many calories does a 5 km run burn?",
    "What is the plot of the movie Inception?", "How do I remove a red wine stain from a carpet?",
    "Which video game console sold the most units?", "How do I set up two-factor authentication?",
    "What is the recommended tire pressure for a sedan?", "How do I knit a scarf for beginners?",
    "What are the symptoms of a cat allergy?", "How do I write a cover letter for a internship?",
    "What is the difference between a latte and a cappuccino?", "How often should I water a cactus?",
    "Who is the lead singer of Coldplay?", "How do I convert a PDF to a Word document?",
    "What is the capital gains tax rate on stocks held one year?", "How do I unclog a kitchen sink?",
    "What is a good name for a golden retriever?", "How do I install Python packages with pip?",
    "Which airline has the most legroom in economy?", "How do I make a sourdough starter?",
    "What is the best sunscreen for sensitive skin?", "How do I back up my phone photos?",
    "What are the rules of pickleball?", "How do I cancel a gym membership?",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="indexes/disfl_qa", help="index directory")
    p.add_argument("--qa", default="corpus/disfl_qa/qa/test.jsonl", help="QA split whose answerable questions are timed")
    p.add_argument("--adapter", default="", help="adapter directory (default: the one ask chooses)")
    p.add_argument("--no-adapter", action="store_true", help="time the base generator")
    p.add_argument("--questions", type=int, default=16, help="questions timed one at a time and in batches")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation length (answers stop at EOS)")
    p.add_argument("--batch-size", type=int, default=8, help="answer_batch generation batch size")
    p.add_argument("--k", type=int, default=2, help="chunks per question (ask's default)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="generator weights (ask --dtype)")
    p.add_argument("--kernels", default="fast", choices=["fast", "plain"], help="ask --kernels: fast (the default) or plain transformers")
    p.add_argument("--draft-tokens", type=int, default=4, help="ask --draft-tokens: prompt lookup's guesses checked a step (0: generate)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, order alternating; the fastest is reported")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocess")
    p.add_argument("--scores", action="store_true", help="print retrieval score distributions instead (threshold evidence)")
    p.add_argument("--scores-qa", default="corpus/disfl_qa/qa/dev.jsonl", help="QA split for --scores")
    p.add_argument("--scores-generator", action="store_true",
                   help="with --scores: also ask the off-topic questions of the generator (the threshold off) and print the share "
                        "refused by the threshold or the generator")
    args = p.parse_args(argv)
    if args.scores_generator and not args.scores:
        p.error("--scores-generator adds to --scores: pass both")
    return args


def ask_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--index", args.index, "-k", str(args.k), "--max-new-tokens", str(args.max_new_tokens),
             "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--kernels", args.kernels,
             "--draft-tokens", str(args.draft_tokens), "--device", "cpu"]
    if args.adapter:
        flags += ["--adapter", args.adapter]
    if args.no_adapter:
        flags += ["--no-adapter"]
    return flags


def ask_config(args: argparse.Namespace):  # -> AskConfig
    from rag_pipeline.answer.ask import AskConfig

    return AskConfig(index=args.index, adapter=args.adapter, no_adapter=args.no_adapter, k=args.k,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype, kernels=args.kernels,
                     draft_tokens=args.draft_tokens, device="cpu")


# ------------------------------------------------------------------------------- scores


def held(best: float, share: float, min_score: float, min_score_words: float) -> bool:
    """``ask``'s retrieval threshold: the best cosine under ``min_score`` and at most ``min_score_words`` of the question's
    content words in the passages."""
    return best < min_score and share <= min_score_words


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def bench_scores(args: argparse.Namespace) -> None:
    from rag_pipeline.qa import load_qa
    from rag_pipeline.index.retriever import Retriever
    from rag_pipeline.support import word_share

    retriever = Retriever.load(args.index, device="cpu")
    items = load_qa(args.scores_qa)
    groups = {
        "answerable": [it.question for it in items if it.answerable],
        "unanswerable (in-domain)": [it.question for it in items if not it.answerable],
        "off-topic": OFF_TOPIC,
    }
    groups = {name: qs for name, qs in groups.items() if qs}
    best, shares = {}, {}
    for name, qs in groups.items():  # the dense cosine and the question's words in the hybrid top-k, as ask's threshold reads them
        hits, cosines = retriever.search_with_cosine(qs, args.k, True)
        best[name] = [-1.0 if c is None else c for c in cosines]
        shares[name] = [word_share(q, [h.chunk.text for h in hs]) for q, hs in zip(qs, hits)]
    print(f"Best retrieval score (cosine, top-1) by question group: {args.scores_qa}, index {args.index}\n")
    print("| group | n | min | p5 | p25 | median | p75 | p95 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, v in best.items():
        cells = " | ".join(f"{x:.3f}" for x in (min(v), pct(v, 5), pct(v, 25), statistics.median(v), pct(v, 75), pct(v, 95), max(v)))
        print(f"| {name} | {len(v)} | {cells} |")
    print("\nShare abstained by the threshold (best score < min_score):\n")
    print("| min_score | " + " | ".join(best) + " |")
    print("|---:|" + "---:|" * len(best))
    for t in (0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40):
        print(f"| {t:.2f} | " + " | ".join(f"{sum(x < t for x in v) / len(v):.1%}" for v in best.values()) + " |")
    print(f"\nShare abstained by ask's threshold: best score < min_score and at most min_score_words of the question's content "
          f"words in the top {args.k} (hybrid):\n")
    print("| min_score | min_score_words | " + " | ".join(best) + " |")
    print("|---:|---:|" + "---:|" * len(best))
    for t in (0.25, 0.30, 0.35):
        for w in (0.25, 0.5, 1.0):
            print(f"| {t:.2f} | {w:.2f} | " + " | ".join(
                f"{sum(held(x, s, t, w) for x, s in zip(best[n], shares[n])) / len(best[n]):.1%}" for n in best) + " |")
    if args.scores_generator:
        off_topic_refusals(args, retriever, best["off-topic"], shares["off-topic"])


def off_topic_refusals(args: argparse.Namespace, retriever, best: list[float], shares: list[float]) -> None:
    """The off-topic questions the threshold lets through, asked of the generator (``ask``'s settings otherwise, the
    threshold off): the share refused by the threshold or by the generator, for each ``min_score``."""
    from dataclasses import replace

    from rag_pipeline.answer.ask import Pipeline

    pipe = Pipeline.load(replace(ask_config(args), min_score=-1.0), retriever=retriever)  # the embedder loaded once
    refused = [a.abstained for a in pipe.answer_batch(OFF_TOPIC)]
    w = pipe.cfg.min_score_words
    print(f"\nOff-topic questions refused by the threshold (min_score_words {w}) or by the generator "
          f"({pipe.description}; the generator alone: {sum(refused)}/{len(refused)}):\n")
    print("| min_score | the threshold | the threshold or the generator |")
    print("|---:|---:|---:|")
    for t in (0.20, 0.25, 0.30):
        gate = [held(x, s, t, w) for x, s in zip(best, shares)]
        print(f"| {t:.2f} | {sum(gate) / len(gate):.1%} | {sum(g or r for g, r in zip(gate, refused)) / len(gate):.1%} |")


# ------------------------------------------------------------------------------- speed


def cold_start(args: argparse.Namespace, question: str) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "rag_pipeline.cli", "ask"]
    t0 = time.perf_counter()
    subprocess.run([*cli, "--help"], capture_output=True, check=True, cwd=REPO, env=env)
    help_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = subprocess.run([*cli, question, *ask_flags(args), "--json", "-q"], capture_output=True, text=True, cwd=REPO, env=env)
    first = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"cold-start run failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    json.loads(r.stdout)
    return {"help": help_s, "first_answer": first}


def time_paths(pipe, questions: list[str], chunk: int, repeats: int) -> dict[str, list]:
    """(wall s, process CPU s, answers) per run of each path; the order alternates between runs."""
    runs: dict[str, list] = {"single": [], "batch": []}
    for r in range(repeats):
        for mode in (("single", "batch") if r % 2 == 0 else ("batch", "single")):
            w0, c0 = time.perf_counter(), time.process_time()
            if mode == "single":
                answers = [pipe.answer(q) for q in questions]
            else:  # in chunks, as answer_file does
                answers = [a for s in range(0, len(questions), chunk) for a in pipe.answer_batch(questions[s:s + chunk])]
            runs[mode].append((time.perf_counter() - w0, time.process_time() - c0, answers))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.scores:
        bench_scores(args)
        return 0
    import torch

    from rag_pipeline.answer.ask import Pipeline
    from rag_pipeline.qa import load_qa

    questions = [it.question for it in load_qa(args.qa) if it.answerable][: args.questions]
    cold = None if args.no_cold else cold_start(args, questions[0])
    t0 = time.perf_counter()
    pipe = Pipeline.load(ask_config(args))
    load_s = time.perf_counter() - t0
    pipe.answer(questions[-1])  # warm-up: first-call allocations, lazy inits
    runs = time_paths(pipe, questions, args.batch_size * 4, args.repeats)
    single_s, single_cpu, singles = min(runs["single"], key=lambda r: r[0])
    batch_s, batch_cpu, batched = min(runs["batch"], key=lambda r: r[0])

    gen = [a for a in singles if a.raw]
    new_tokens = [len(pipe.tokenizer(a.raw, add_special_tokens=False)["input_ids"]) for a in gen]
    prompt_tokens = [len(pipe.tokenizer(pipe._model_text(pipe._render(a.question, a.retrieved)), add_special_tokens=False)["input_ids"])
                     for a in gen]
    stage = {k: statistics.median(a.timings[k] for a in singles) for k in ("retrieval", "prompt", "generation")}
    totals = [sum(a.timings.values()) for a in singles]
    same = sum(a.raw == b.raw for a, b in zip(singles, batched))
    n = len(questions)
    print(f"\nask speed: {n} answerable questions of {args.qa}, k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"batch_size={args.batch_size}, best of {args.repeats} alternating runs; {pipe.description}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| measure | value |")
    print("|---|---:|")
    if cold:
        print(f"| `ask --help` (fresh process) | {cold['help']:.2f} s |")
        print(f"| cold start: process start to first answer | {cold['first_answer']:.1f} s |")
    print(f"| in-process load (index + embedder + generator) | {load_s:.1f} s |")
    print(f"| warm latency, one question (median total; min) | {statistics.median(totals):.2f} s; {min(totals):.2f} s |")
    print(f"| - retrieval (median) | {stage['retrieval'] * 1000:.0f} ms |")
    print(f"| - prompt (median) | {stage['prompt'] * 1000:.0f} ms |")
    print(f"| - generation (median) | {stage['generation']:.2f} s |")
    print(f"| prompt tokens per question (median) | {statistics.median(prompt_tokens) if prompt_tokens else 0:.0f} |")
    print(f"| generated tokens per answer (median) | {statistics.median(new_tokens) if new_tokens else 0:.0f} |")
    print(f"| threshold abstentions | {n - len(gen)} of {n} |")
    print(f"| one at a time: throughput (CPU s per question) | {n / single_s:.3f} q/s ({single_cpu / n:.2f}) |")
    print(f"| batched (answer_batch): throughput (CPU s per question) | {n / batch_s:.3f} q/s ({batch_cpu / n:.2f}) |")
    print(f"| batch speedup, wall (CPU) (goal >= 3x) | {single_s / batch_s:.2f}x ({single_cpu / batch_cpu:.2f}x) |")
    print(f"| greedy answers equal, batch vs one at a time | {same} of {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
