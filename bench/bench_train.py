"""Training throughput and peak memory: our train-generator path beside the tutorials' recipe.

    .venv/bin/python bench/bench_train.py --steps 2 --repeats 2 --smol-steps 2

The recipe (what the Seq2Seq LoRA tutorials do): Seq2SeqTrainer; input
``answer the question based on the context: question: {q} context: {c}`` padded to 512 tokens,
target padded to 64; LoRA r=16, alpha=32, dropout 0.05 on T5 ``q``,``v``; lr 1e-4; batch 4,
gradient accumulation 4; fp32. Ours: ``rag_pipeline.train.run`` on the same examples (as a RAFT
dataset), same batch and accumulation and the same 512-token input budget, with its defaults
(dynamic padding, length-grouped batches, bf16 autocast where the CPU has fast bf16, LoRA on
q,k,v,o; the RAFT prompt with its system message, cut in the middle when over 512). Both train the same
t5-small-sized model with random weights and the MiniLM tokenizer (offline). Each path runs in
its own subprocess so its peak RSS is its own. SmolLM2-135M LoRA throughput is reported too.

Data: examples from corpus/disfl_qa (the oracle passage plus two distractors, seeded) when it
exists, otherwise synthesized.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus" / "disfl_qa"
RECIPE_PROMPT = "answer the question based on the context: question: {q} context: {c}"


def make_rows(n: int, seed: int, docs_per_example: int = 1) -> list[dict]:
    """RAFT rows (documented columns) from disfl_qa, or synthesized when it is absent."""
    from rag_pipeline.prompt import TEMPLATES, render_user

    rng = random.Random(seed)
    template = TEMPLATES["raft-v1"]
    if (CORPUS / "qa" / "train.jsonl").is_file():
        docs = {d["id"]: d for d in map(json.loads, (CORPUS / "documents.jsonl").read_text().splitlines())}
        qa = [q for q in map(json.loads, (CORPUS / "qa" / "train.jsonl").read_text().splitlines()) if q.get("answer") and q["doc_id"] in docs]
        qa = sorted(qa, key=lambda q: q["id"])
        ids = sorted(docs)
    else:
        words = "alpha beta gamma delta river stone city music paper light".split()
        docs = {f"d{i}": {"id": f"d{i}", "title": f"Doc {i}", "text": " ".join(rng.choice(words) for _ in range(120))} for i in range(50)}
        qa = [{"id": f"q{i}", "question": f"What about {rng.choice(words)}?", "answer": [rng.choice(words)], "doc_id": f"d{i % 50}"} for i in range(n)]
        ids = sorted(docs)
    rows = []
    for q in rng.sample(qa, min(n, len(qa))):
        chosen = [docs[q["doc_id"]]] + [docs[i] for i in rng.sample([i for i in ids if i != q["doc_id"]], docs_per_example - 1)]
        rng.shuffle(chosen)
        pos = next(i for i, d in enumerate(chosen) if d["id"] == q["doc_id"])
        rows.append({
            "id": q["id"], "question": q["question"], "documents": [{k: d.get(k, "") for k in ("id", "title", "text")} for d in chosen],
            "oracle_position": pos, "prompt": render_user(template, q["question"], chosen),
            "completion": f"{q['answer'][0]} [{pos + 1}]", "answer": list(q["answer"]), "answerable": True,
        })
    return rows


def write_dataset(root: Path, rows: list[dict]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[:2])}
                ).save_to_disk(str(root / "dataset"))
    (root / "manifest.json").write_text(json.dumps({"kind": "raft-dataset", "template": "raft-v1", "fingerprint": "bench"}))
    return root


def build_t5_small(path: Path) -> Path:
    """A t5-small-sized T5 (d_model 512, 6+6 layers, 8 heads, d_ff 2048) with random weights and the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from rag_pipeline.model_paths import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model("sentence-transformers/all-MiniLM-L6-v2")))
    tok.eos_token = tok.sep_token  # BERT's tokenizer has no EOS; [SEP] ends a target
    config = T5Config(vocab_size=len(tok), d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def worker_recipe(data: Path, model_dir: Path, steps: int) -> dict:
    """The tutorials' Seq2SeqTrainer recipe: fixed padding to 512/64, LoRA q,v, fp32."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = load_from_disk(str(data / "dataset"))["train"]
    n = steps * 16

    def prep(batch: dict) -> dict:
        contexts = ["\n".join(d["text"] for d in docs) for docs in batch["documents"]]
        inputs = [RECIPE_PROMPT.format(q=q, c=c) for q, c in zip(batch["question"], contexts)]
        enc = tok(inputs, max_length=512, padding="max_length", truncation=True)
        labels = tok(text_target=batch["completion"], max_length=64, padding="max_length", truncation=True)["input_ids"]
        enc["labels"] = [[t if t != tok.pad_token_id else -100 for t in seq] for seq in labels]
        return enc

    train = rows.select(range(n)).map(prep, batched=True, remove_columns=rows.column_names)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"))
    args = Seq2SeqTrainingArguments(
        output_dir=str(data / "recipe-out"), per_device_train_batch_size=4, gradient_accumulation_steps=4, learning_rate=1e-4,
        max_steps=steps, save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train)
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    targets = sum(sum(t != -100 for t in seq) for seq in train["labels"])
    return {"examples_per_s": n / dt, "target_tokens_per_s": targets / dt, "tokens_per_s": n * (512 + 64) / dt, "seconds": dt, "examples": n,
            "mean_input_tokens": 512.0, "threads": torch.get_num_threads()}


def worker_ours(data: Path, model_dir: str, steps: int, bf16: str) -> dict:
    """rag_pipeline.train.run on the same rows with the bench's batch and accumulation."""
    import torch

    from rag_pipeline import train as T

    out = data / f"ours-{Path(model_dir).name}-{bf16}"
    shutil.rmtree(out, ignore_errors=True)  # an earlier repeat's output
    cfg = T.TrainConfig(dataset=str(data), output=str(out), base_model=model_dir, max_steps=steps, batch_size=4, grad_accum=4,
                        learning_rate=1e-4, eval_subset=1, max_new_tokens=1, progress=False, bf16=bf16, device="cpu",
                        max_length=512)  # the recipe's input budget: prompts over it are cut in the middle
    summary = T.run(cfg)
    return {"examples_per_s": summary["train_examples_per_s"], "target_tokens_per_s": summary["train_target_tokens_per_s"],
            "tokens_per_s": summary["train_tokens_per_s"],
            "seconds": None, "examples": steps * 16, "bf16": summary["bf16"], "threads": torch.get_num_threads()}


def run_worker(args: list[str]) -> dict:
    """Run one path in a subprocess; return its JSON line plus its peak RSS."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (16 examples each) per T5 path")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per T5 path; the best is reported")
    ap.add_argument("--smol-steps", type=int, default=2, help="optimizer steps for SmolLM2-135M LoRA (0 = skip)")
    ap.add_argument("--docs", type=int, default=1, help="documents per example: 1 = the tutorials' SQuAD format (question + "
                    "its paragraph); 3 = RAFT-like multi-document contexts, which mostly exceed the recipe's 512 tokens")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        res = (worker_recipe(Path(args.data), Path(args.model), args.steps) if args.worker == "recipe"
               else worker_ours(Path(args.data), args.model, args.steps, args.bf16))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    from rag_pipeline.model_paths import SMOLLM2_ID

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        n = max(args.steps, args.smol_steps) * 16
        data = write_dataset(root / "raft", make_rows(n, seed=0, docs_per_example=args.docs))
        t5 = build_t5_small(root / "t5-small-random")
        common = ["--data", str(data), "--steps", str(args.steps)]
        paths = {
            "recipe: Seq2SeqTrainer, pad 512/64, fp32": ["--worker", "recipe", "--model", str(t5), *common],
            "ours: t5-small, fp32": ["--worker", "ours", "--model", str(t5), "--bf16", "false", *common],
            "ours: t5-small, bf16 auto": ["--worker", "ours", "--model", str(t5), "--bf16", "auto", *common],
        }
        # Interleave the paths and keep each one's best run: a shared machine's load drifts over minutes.
        results: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, cmd in paths.items():
                results[name].append(run_worker(cmd))
                print(f"{name}: {json.dumps(results[name][-1])}", flush=True)
        rows = [(name, max(rs, key=lambda r: r["examples_per_s"])) for name, rs in results.items()]
        if args.smol_steps:
            smol = ["--data", str(data), "--steps", str(args.smol_steps)]
            rows.append(("ours: SmolLM2-135M LoRA, bf16 auto", run_worker(["--worker", "ours", "--model", SMOLLM2_ID, *smol])))
    base = rows[0][1]["examples_per_s"]
    src = "corpus/disfl_qa" if (CORPUS / "qa" / "train.jsonl").is_file() else "synthetic"
    print(f"\ndata: {src}; {args.steps} steps of batch 4 x grad-accum 4, best of {args.repeats}; "
          f"{os.cpu_count()} CPUs; torch threads {rows[0][1]['threads']}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':42s} {'examples/s':>11s} {'target tok/s':>13s} {'all tok/s':>10s} {'peak RSS MB':>12s} {'vs recipe':>10s}")
    for name, r in rows:
        print(f"{name:42s} {r['examples_per_s']:11.2f} {r['target_tokens_per_s']:13.1f} {r['tokens_per_s']:10.0f} {r['peak_rss_mb']:12.0f} "
              f"{r['examples_per_s'] / base:9.2f}x")


if __name__ == "__main__":
    main()
