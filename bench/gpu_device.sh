#!/usr/bin/env bash
# On the lent GPU machine (no network; Python 3.12, torch, transformers): install the carried wheels, run the GPU
# tests, then the GPU bench, writing everything to $OUT as it goes. Prepare here first: python bench/gpu.py --prepare
# (writes .aif-cache/gpu-bench and .gpu/whl), and carry both.
# Usage: OUT=out [BUDGET=560] bash bench/gpu_device.sh [--8b] [--profile]   (BUDGET: seconds for the whole script)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$SITE" .gpu/whl/*.whl 2>&1 | tail -3
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs > "$OUT/test_gpu.log" 2>&1
echo "test_gpu exit $?" >> "$OUT/test_gpu.log"
tail -3 "$OUT/test_gpu.log"
python3 bench/gpu.py --out "$OUT" --budget-s $(( ${BUDGET:-560} - SECONDS )) "$@"  # the bench stops starting measurements at the budget
