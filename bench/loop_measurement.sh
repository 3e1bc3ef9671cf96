#!/usr/bin/env bash
# The loop measurement of docs/loop.md: RM-labelled loop (K iterations), then the LLM-labelled control
# (CONTROL_K iterations, same sizes), one report. Needs the two reward models of bench/rm_loop_models.py
# (RMS=runs/loop-rms by default), or the labeler, its gold file and the evaluators named by LABELER, GOLD and
# EVALUATORS (comma-separated NAME=PATH, e.g. those of bench/rm_alpaca_eval.py and bench/rm_human_evaluators.py).
# Usage: bash bench/loop_measurement.sh [extra --set overrides for both loops, e.g. --set dpo.beta=0.2 --set dpo.lr=1e-5]
set -euo pipefail
cd "$(dirname "$0")/.."
RMS=${RMS:-runs/loop-rms}
OUT=${OUT:-runs/loop-measure}
PROMPTS=${PROMPTS:-../shared/data/self-instruct/user_oriented_instructions.jsonl}
LABELER=${LABELER:-$RMS/labeler}
GOLD=${GOLD:-$RMS/gold.jsonl}
EVALUATORS=${EVALUATORS:-$RMS/evaluator}
common=(--prompts "$PROMPTS" --evaluator "$EVALUATORS" "$@")
mkdir -p "$OUT"
/usr/bin/time -v .venv/bin/aifeedback loop --run-dir "$OUT/rm" --labeler "rm:$LABELER" --gold "$GOLD" --iterations "${K:-3}" "${common[@]}" 2> "$OUT-rm.time" || { tail -30 "$OUT-rm.time"; exit 1; }
if [ -z "${SKIP_CONTROL:-}" ]; then
  # the initial policy's held-out samples depend only on the policy, the split, the sizes and the seed,
  # which both loops share: the control reuses them instead of sampling them again
  if [ -f "$OUT/rm/baseline/eval.parquet" ] && [ ! -e "$OUT/llm/baseline" ]; then
    mkdir -p "$OUT/llm" && cp -r "$OUT/rm/baseline" "$OUT/llm/baseline"
  fi
  /usr/bin/time -v .venv/bin/aifeedback loop --run-dir "$OUT/llm" --labeler llm --compare "rm-labelled=$OUT/rm" --iterations "${CONTROL_K:-${K:-3}}" "${common[@]}" ${CONTROL_SETS:-} 2> "$OUT-llm.time" || { tail -30 "$OUT-llm.time"; exit 1; }
fi
