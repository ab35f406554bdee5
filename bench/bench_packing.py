"""Training examples/s with the shared passages read once (``--pack-shared``) against reading every prompt whole.

Both runs train the base generator with configs/train-smollm2-mix-packed.yaml's LoRA (r 16 on attention and MLP, no
dropout; the learning rate does not change a step's cost) on the same RAFT dataset, one built with ``build-raft-dataset --share-context N``, for the
same wall-clock budget each, in their own ``train-generator`` processes; the figures are the runs' own counters
(``rag_pipeline.json``: examples, tokens and target tokens per second of training steps). The loss and gradients of a
packed batch equal those of its examples apart (tests/test_packing.py), so the speed is the whole difference. Keep
the CPU otherwise idle, and compare figures within one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_packing.py --dataset runs/raft-mix-shared --minutes 5 --output runs/bench-packing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "rag_pipeline.cli", "train-generator"]
COMMON = ["--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0",
          "--lora-target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--learning-rate", "5e-4",
          "--max-steps", "100000", "--eval-subset", "8", "--eval-generate", "1", "--max-new-tokens", "8",
          "--no-snapshots", "--no-progress", "--device", "cpu", "--seed", "0"]
RUNS = {  # name -> flags: 8 examples a step apart; 2 packed sequences (~5 questions each on the bundled data) packed
    "apart (every prompt whole)": ["--batch-size", "4", "--grad-accum", "2"],
    "packed (--pack-shared)": ["--pack-shared", "--batch-size", "1", "--grad-accum", "2"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a build-raft-dataset output built with --share-context N (N > 1)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training minutes per run")
    ap.add_argument("--output", default="runs/bench-packing")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, flags) in enumerate(RUNS.items()):
        adapter = out / f"run-{i}"
        cmd = [*CLI, "--dataset", args.dataset, "--output", str(adapter), "--max-minutes", str(args.minutes), *COMMON, *flags]
        with open(out / f"run-{i}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
        if rc != 0:
            sys.exit(f"{name} failed (exit {rc}): see {out}/run-{i}.log")
        m = json.loads((adapter / "rag_pipeline.json").read_text())["metrics"]
        state = json.loads((adapter / "checkpoints" / "last" / "state.json").read_text())
        rows.append((name, m["steps"], state["train_examples"], m["train_seconds"], m["train_examples_per_s"],
                     m["train_tokens_per_s"], m["train_target_tokens_per_s"]))
    base = rows[0][4]
    print(f"dataset {args.dataset}, {args.minutes:g} training minutes a run")
    print("| run | steps | examples | seconds | examples/s | tokens read/s | target tokens/s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, steps, n, sec, ex_s, tok_s, tgt_s in rows:
        print(f"| {name} | {steps} | {n} | {sec:.0f} | {ex_s:.3f} | {tok_s:.0f} | {tgt_s:.1f} | {ex_s / base:.2f}x |")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
