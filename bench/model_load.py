"""Load time of the embedded policy: first load (GGUF -> safetensors conversion) vs later loads,
and how fast an unknown Hugging Face id is refused with downloads off (it must not wait on a network;
this figure used to be a `< 10 s` assertion in tests/test_models.py, and tests assert no speeds).

Each load runs in a fresh process, as a user's command would. Usage:
    .venv/bin/python bench/model_load.py [--fresh-cache] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

UNKNOWN = (
    "import os, time; os.environ.pop('AIFEEDBACK_ALLOW_DOWNLOAD', None); t=time.perf_counter()\n"
    "from aifeedback.errors import ModelNotFound\nfrom aifeedback.models import resolve\n"
    "try:\n    resolve('some-org/not-a-cached-model')\nexcept ModelNotFound:\n    print(time.perf_counter()-t)\n"
)
CHILD = "import time; t=time.perf_counter(); from aifeedback.backends.transformers import load_causal_lm; load_causal_lm('embedded/smollm2-135m-instruct'); print(time.perf_counter()-t)"


def load_once(env, code: str = CHILD) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh-cache", action="store_true", help="convert into an empty cache first, to time the first load")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ)
    if args.fresh_cache:
        env["AIFEEDBACK_CACHE"] = tempfile.mkdtemp(prefix="aif-bench-cache-")
        first, first_wall = load_once(env)
        print(f"first load (GGUF conversion): {first:.1f} s in-process, {first_wall:.1f} s with interpreter start")
    for i in range(args.repeats):
        t, wall = load_once(env)
        print(f"later load {i + 1}: {t:.1f} s in-process, {wall:.1f} s with interpreter start")
    t, wall = load_once(env, UNKNOWN)  # HF_HUB_OFFLINE as the caller has it: the refusal must be quick either way
    print(f"unknown hub id refused (downloads off, HF_HUB_OFFLINE={env.get('HF_HUB_OFFLINE', 'unset')}): {t:.2f} s in-process, {wall:.1f} s with interpreter start")


if __name__ == "__main__":
    main()
