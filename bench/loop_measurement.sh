#!/usr/bin/env bash
# The loop measurement of docs/loop.md: RM-labelled loop, then the LLM-labelled control, one report.
# Needs the two reward models of bench/rm_loop_models.py (RMS=runs/loop-rms by default).
# Usage: nice -n 10 bash bench/loop_measurement.sh [extra --set overrides for both loops]
set -euo pipefail
cd "$(dirname "$0")/.."
RMS=${RMS:-runs/loop-rms}
OUT=${OUT:-runs/loop-measure}
PROMPTS=${PROMPTS:-../shared/data/self-instruct/user_oriented_instructions.jsonl}
common=(--prompts "$PROMPTS" --evaluator "$RMS/evaluator" --iterations "${K:-3}" "$@")
/usr/bin/time -v .venv/bin/aifeedback loop --run-dir "$OUT/rm" --labeler "rm:$RMS/labeler" --gold "$RMS/gold.jsonl" "${common[@]}" 2> "$OUT-rm.time" || { tail -30 "$OUT-rm.time"; exit 1; }
if [ -z "${SKIP_CONTROL:-}" ]; then
  /usr/bin/time -v .venv/bin/aifeedback loop --run-dir "$OUT/llm" --labeler llm --compare "rm-labelled=$OUT/rm" "${common[@]}" ${CONTROL_SETS:-} 2> "$OUT-llm.time" || { tail -30 "$OUT-llm.time"; exit 1; }
fi
