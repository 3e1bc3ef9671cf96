"""Load time of the embedded policy: first load (GGUF -> safetensors conversion) vs later loads.

Each load runs in a fresh process, as a user's command would. Usage:
    .venv/bin/python bench/model_load.py [--fresh-cache]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CHILD = "import time; t=time.perf_counter(); from aifeedback.backends.hf_local import load_causal_lm; load_causal_lm('embedded/smollm2-135m-instruct'); print(time.perf_counter()-t)"


def load_once(env) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
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


if __name__ == "__main__":
    main()
