#!/usr/bin/env bash
# Install everything, then run the main job on the bundled corpus with the packaged models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
rp() { .venv/bin/rag-pipeline "$@"; }
rp build-index --config configs/index.yaml
rp search "What, no wait, who gave their name to Normandy in France?" --index indexes/disfl_qa -k 3
rp eval-retrieval --config configs/eval-retrieval.yaml
