#!/usr/bin/env bash
# Set up (venv, packages, system packages for browser tests) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if [[ -x scripts/system-deps.sh ]]; then bash scripts/system-deps.sh; fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -ra --durations=20 tests "$@"
