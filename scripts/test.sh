#!/usr/bin/env bash
# Install what the tests need and run the whole suite, offline.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
# The web page test (tests/test_web.py) drives a real headless Chromium: install it and its driver
# where we can (root with apt, as in CI). Without them the test skips locally and fails under CI=true.
if ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
            || echo "could not install chromium and chromium-driver: the browser test will skip (or fail under CI)" >&2
    else
        echo "chromedriver not found and not root: install chromium and chromium-driver to run the browser test" >&2
    fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q -rs "$@"
