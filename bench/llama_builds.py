"""Decode and prefill speed of llama-cpp-python builds, side by side on the embedded GGUF.

    python bench/llama_builds.py portable=WHEEL_OR_DIR native=WHEEL_OR_DIR [--rounds 3]

Each wheel is unpacked into its own folder and measured in a fresh subprocess, the
builds alternating round by round so that a busy neighbour slows both alike. Prefill:
one eval of a 512-token prompt. Decode: 128 greedy tokens, one eval each. The
figure per build is the median over rounds; the ratio is the portable build over
the native one. The native build only runs where its CPU features are granted (on a
machine that lists AMX but refuses it, it dies on the first request: that is the
point of the portable build), and then the script says so.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import llama_cpp
from aifeedback.models import smollm2_gguf
llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=2048, n_threads=int(sys.argv[1]), n_batch=512, verbose=False)
text = " ".join(f"Sentence number {i} talks about apples, rivers and small robots." for i in range(60))
toks = llm.tokenize(text.encode())[:512]
llm.reset(); llm.eval(toks[:16])  # warm-up
llm.reset(); t = time.perf_counter(); llm.eval(toks); prefill = len(toks) / (time.perf_counter() - t)
n = 128; t = time.perf_counter()
for _ in range(n):
    tok = llm.sample(temp=0.0)
    llm.eval([tok])
decode = n / (time.perf_counter() - t)
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"prefill_tok_s": prefill, "decode_tok_s": decode, "prompt_tokens": len(toks), "kernels": info}))
"""


def _unpack(src: str, into: Path) -> Path:
    p = Path(src)
    wheel = p if p.is_file() else next(p.glob("llama_cpp_python-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    return into


def main() -> None:
    args = [a for a in sys.argv[1:] if "=" in a]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    threads = os.cpu_count() or 1
    repo = Path(__file__).resolve().parents[1]
    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for a in args:
            name, src = a.split("=", 1)
            builds[name] = _unpack(src, Path(tmp) / name)
        results: dict[str, list[dict]] = {n: [] for n in builds}
        failures: dict[str, str] = {}
        for r in range(rounds):
            for name, path in builds.items():
                if name in failures:
                    continue
                env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{repo}"}
                out = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True, env=env, timeout=600)
                if out.returncode != 0:
                    failures[name] = f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}"
                    continue
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {name}: prefill {results[name][-1]['prefill_tok_s']:.0f} tok/s, decode {results[name][-1]['decode_tok_s']:.1f} tok/s", flush=True)
    print(f"\n{threads} threads, {rounds} rounds, median per build (SmolLM2-135M Q4_1, 512-token prefill, 128 decoded tokens)")
    print(f"{'build':<10} {'prefill tok/s':>14} {'decode tok/s':>13}  kernels")
    med = {}
    for name, rs in results.items():
        if not rs:
            print(f"{name:<10} {'failed':>14} {'':>13}  {failures.get(name)}")
            continue
        med[name] = (statistics.median(x["prefill_tok_s"] for x in rs), statistics.median(x["decode_tok_s"] for x in rs))
        kern = " ".join(k.split("=")[0].strip() for k in rs[0]["kernels"].split("|") if k.strip().endswith("= 1"))
        print(f"{name:<10} {med[name][0]:>14.0f} {med[name][1]:>13.1f}  {kern}")
    if "portable" in med and "native" in med:
        print(f"\nportable / native: prefill {med['portable'][0] / med['native'][0]:.2f}x, decode {med['portable'][1] / med['native'][1]:.2f}x")


if __name__ == "__main__":
    main()
