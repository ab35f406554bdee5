"""Training recipes at equal CPU time: examples/s and the quality each reaches.

Each recipe trains the base generator from scratch (a fresh LoRA, or a full fine-tune of the last
layers) on a RAFT dataset for the same wall-clock budget, in its own ``train-generator`` process:

1. a probe of ``--probe-steps`` optimizer steps measures the recipe's examples/s;
2. the run gets as many steps as that speed fits into ``--minutes`` (the cosine schedule ends there;
   ``--max-minutes`` stops it if the machine turns out slower);
3. one ``evaluate`` answers the same seeded sample of test questions with every result (hybrid
   top-2 retrieval, greedy decoding, no calibration, so that only training differs).

The first recipe, ``reference``, is the reference adapter's own (configs/train-smollm2-reference.yaml):
the baseline the others are printed against. Compare figures within one run: the machine's speed
and load change between runs. Keep the CPU otherwise idle: the budget is wall-clock time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_recipes.py --dataset runs/raft \\
        --oracle-dataset runs/raft-oracle --minutes 10 --output runs/recipes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "rag_pipeline.cli"]
REFERENCE = ["--method", "lora", "--lora-r", "16", "--lora-alpha", "32",
             "--lora-target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
             "--learning-rate", "5e-4", "--batch-size", "4", "--grad-accum", "2", "--warmup-ratio", "0.05",
             "--max-length", "1024", "--bf16", "auto", "--device", "cpu", "--seed", "0"]
# name -> (dataset key, flags on top of REFERENCE, what it tests)
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "reference": ("full", [], "LoRA r16 on attention + MLP, lr 5e-4, oracle + 1 distractor, bf16 autocast"),
    "lr-2e-3": ("full", ["--learning-rate", "2e-3"], "the same at 4x the peak learning rate"),
    "oracle-only": ("oracle", [], "the same on prompts with the oracle passage only (about half the tokens)"),
    "bf16-base": ("full", ["--base-dtype", "bfloat16"], "the frozen base held in bf16 (no per-step casts)"),
    "no-dropout": ("full", ["--lora-dropout", "0"], "the same without LoRA dropout (no random masks drawn)"),
    "full-last-4": ("full", ["--method", "full", "--full-layers", "4", "--learning-rate", "1e-4"],
                    "full fine-tune of the last 4 of 30 layers, lr 1e-4, instead of LoRA"),
}


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; return the CPU seconds it used (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"{' '.join(cmd[2:5])} ... failed (exit {rc}): see {log}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def metrics_of(adapter: Path) -> dict:
    return json.loads((adapter / "rag_pipeline.json").read_text())["metrics"]


def command(name: str, dataset: str, flags: list[str]) -> list[str]:
    return [*CLI, "train-generator", "--dataset", dataset, *REFERENCE, *flags, "--no-progress", "--no-snapshots",
            "--metric-for-best", "val_loss", "--eval-generate", "1"]


def probe(name: str, dataset: str, flags: list[str], out: Path, probe_steps: int) -> float:
    """Train ``name`` for ``probe_steps`` steps; return its examples/s."""
    folder = out / f"probe-{name}"
    if not (folder / "rag_pipeline.json").exists():
        run([*command(name, dataset, flags), "--output", str(folder), "--max-steps", str(probe_steps), "--eval-steps",
             str(probe_steps), "--eval-subset", "1"], out / f"probe-{name}.log")
    return metrics_of(folder)["train_examples_per_s"]


def train(name: str, dataset: str, flags: list[str], out: Path, minutes: float, probe_steps: int) -> dict:
    """Probe, then train ``name`` for ``minutes``; return its figures."""
    base = command(name, dataset, flags)
    ex_s = probe(name, dataset, flags, out, probe_steps)
    steps = max(1, math.floor(60 * minutes * ex_s / 8))
    adapter = out / name
    started = time.monotonic()
    cpu = 0.0
    if not (adapter / "rag_pipeline.json").exists():
        cpu = run([*base, "--output", str(adapter), "--max-steps", str(steps), "--eval-steps", str(steps),
                   "--eval-subset", "64", "--max-minutes", f"{1.15 * minutes:.2f}"], out / f"{name}.log")
    m = metrics_of(adapter)
    return {"recipe": name, "probe_examples_per_s": ex_s, "planned_steps": steps, "steps": m["steps"],
            "examples_per_s": m["train_examples_per_s"], "train_minutes": m["train_seconds"] / 60,
            "examples_seen": round(m["train_seconds"] * m["train_examples_per_s"]),
            "val_loss": m["tuned"]["val_loss"], "status": m["status"], "wall_minutes": (time.monotonic() - started) / 60,
            "cpu_minutes": cpu / 60}


def where_tokens_go(dataset: str, batch_size: int = 4) -> dict:
    """What a training step computes on ``dataset``'s train split: tokens per example, the share that are
    targets (the loss), and the share of a length-grouped batch that is padding (what packing could save)."""
    from rag_pipeline import train as T
    from rag_pipeline.generator import load_tokenizer
    from rag_pipeline.model_paths import SMOLLM2_ID, resolve_model
    from rag_pipeline.prompt import recorded_template

    manifest, ds = T.load_raft(dataset)
    template = recorded_template(manifest.get("template", "raft-v1"), manifest.get("template_text"), dataset)
    tokenizer = load_tokenizer(resolve_model(SMOLLM2_ID), "causal")
    examples, _ = T.encode_split(T.model_texts(ds["train"], tokenizer, template), ds["train"]["completion"], tokenizer, "causal", 1024)
    lengths = [len(e["input_ids"]) for e in examples]
    targets = sum(sum(t != -100 for t in e["labels"]) for e in examples)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in T.micro_batches(lengths, batch_size, 0, 0))
    return {"dataset": dataset, "examples": len(lengths), "tokens_per_example": sum(lengths) / len(lengths),
            "target_share": targets / sum(lengths), "padding_share": 1 - sum(lengths) / padded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="RAFT dataset (configs/raft.yaml's: oracle + 1 distractor)")
    ap.add_argument("--oracle-dataset", required=True, help="the same questions with the oracle passage only "
                    "(build-raft-dataset --config configs/raft.yaml --num-distractors 0)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per recipe")
    ap.add_argument("--probe-steps", type=int, default=3)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--limit", type=int, default=200, help="test questions answered (seeded sample)")
    ap.add_argument("--output", default="runs/recipes")
    ap.add_argument("--speed-only", action="store_true", help="only each recipe's probe: examples/s, without training or evaluating")
    args = ap.parse_args()
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipe {unknown[0]!r}: choose from {', '.join(RECIPES)}")
    out = Path(args.output)
    ours = {"eval", "eval.log", "recipes.json"} | {f"{p}{n}{e}" for n in RECIPES for p in ("", "probe-") for e in ("", ".log")}
    theirs = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if theirs or (out.exists() and not out.is_dir()):
        sys.exit(f"--output {out} holds {theirs[0] if theirs else 'a file'}, which this bench did not write: give a new or "
                 "a previous run's folder")
    out.mkdir(parents=True, exist_ok=True)
    for d in (args.dataset, args.oracle_dataset):
        w = where_tokens_go(d)
        print(f"{w['dataset']}: {w['examples']} training examples, {w['tokens_per_example']:.0f} tokens each, "
              f"{100 * w['target_share']:.1f}% of them targets; padding {100 * w['padding_share']:.1f}% of a length-grouped "
              "batch of 4 (the most packing could save)", flush=True)
    datasets = {"full": args.dataset, "oracle": args.oracle_dataset}
    if args.speed_only:  # the probes alone, one after the other on the same batches: examples/s, no quality
        print(f"\n| recipe | examples/s over {args.probe_steps} steps of 8 | vs reference |\n| --- | ---: | ---: |")
        speeds = {n: probe(n, datasets[RECIPES[n][0]], RECIPES[n][1], out, args.probe_steps) for n in names}
        for n, v in speeds.items():
            ratio = f"{v / speeds['reference']:.2f}x" if "reference" in speeds else ""
            print(f"| {n} | {v:.2f} | {ratio} |")
        return
    rows = []
    for name in names:
        key, flags, _ = RECIPES[name]
        rows.append(train(name, datasets[key], flags, out, args.minutes, args.probe_steps))
        print(json.dumps(rows[-1]), flush=True)
    ev = out / "eval"
    if not (ev / "metrics.json").exists():
        run([*CLI, "evaluate", "--config", "configs/evaluate.yaml", "--no-oracle", "--no-injection", "--limit", str(args.limit),
             *[a for n in names for a in ("--adapter", str(out / n))], "--output", str(ev)], out / "eval.log")
    results = json.loads((ev / "metrics.json").read_text())["results"]
    print(f"\n{args.minutes:g} minutes of training each, {args.limit} test questions (greedy, hybrid top-2)\n")
    print("| recipe | examples/s | steps | examples seen | val loss | overall F1 | HasAns F1 | NoAns acc. | false abstentions | cite prec. |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        r = results[row["recipe"]]["retrieved"]
        sq, ab = r["squad2"], r["abstention"]
        row.update(overall_f1=sq["overall_f1"], has_f1=sq["has_f1"], noans_acc=sq["noans_acc"],
                   false_abstain=ab["false_abstain_rate"], cite_precision=r["citations"]["precision"])
        print(f"| {row['recipe']} | {row['examples_per_s']:.2f} | {row['steps']} | {row['examples_seen']} | {row['val_loss']:.3f} | "
              f"{100 * sq['overall_f1']:.1f} | {100 * sq['has_f1']:.1f} | {100 * sq['noans_acc']:.1f} | "
              f"{100 * ab['false_abstain_rate']:.1f} | {100 * (r['citations']['precision'] or 0):.1f} |")
    (out / "recipes.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
