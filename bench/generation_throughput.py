"""Generation tokens/s on the embedded model, side by side in one run:
batched (our decode loop) vs sequential (batch 1), and llama.cpp's server on the same GGUF, single stream.

Usage: .venv/bin/python bench/generation_throughput.py [--prompts 64] [--batches 8,16,32,64] [--max-new-tokens 48] [--no-llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_X = 2.0  # issue 18: batched generation at least 2x llama.cpp's single stream
LLAMA_CPP_BEFORE = 37.3  # tok/s, llama.cpp server single stream before the portable build (docs/performance.md)


def prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "data" / "prompts" / "prompts.jsonl").open()]
    return [[{"role": "user", "content": rows[i % len(rows)]["prompt"]}] for i in range(n)]


def run_backend(backend, chats, params, batch: int) -> tuple[int, float]:
    backend.cfg.gen_batch_size = batch
    t0 = time.perf_counter()
    res = backend.generate(chats, params, seeds=[[i] for i in range(len(chats))])
    dt = time.perf_counter() - t0
    return sum(c.completion_tokens for r in res for c in r.completions), dt


def run_llama_cpp(chats, max_new_tokens: int) -> tuple[int, float] | None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from conftest import start_llama_server
    except Exception:
        return None
    from aifeedback.backends.openai_compat import OpenAIBackend
    from aifeedback.config import BackendConfig, SamplingConfig

    server = start_llama_server(Path(tempfile.mkdtemp()))
    try:
        b = OpenAIBackend(BackendConfig(kind="openai", model="smollm2", base_url=server.base_url, max_concurrency=1))
        b.generate(chats[:1], SamplingConfig(max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        res = b.generate(chats, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.7), seeds=[[i] for i in range(len(chats))])
        dt = time.perf_counter() - t0
        return sum(c.completion_tokens for r in res for c in r.completions), dt
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batches", default="8,16,32,64", help="decode batch sizes to time (each over all prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--sequential-prompts", type=int, default=4, help="batch-1 decoding is slow: time it on a prefix")
    ap.add_argument("--no-llama-cpp", action="store_true")
    args = ap.parse_args()

    from aifeedback.config import BackendConfig, SamplingConfig
    from aifeedback.stage import cached_backend

    backend = cached_backend(BackendConfig())
    params = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.7)
    chats = prompts(args.prompts)
    run_backend(backend, chats[:2], SamplingConfig(max_new_tokens=4), 2)  # warm-up
    rows = []
    tok, dt = run_backend(backend, chats[: args.sequential_prompts], params, 1)
    seq = tok / dt
    rows.append(("transformers, sequential (batch 1)", seq))
    for bs in [int(x) for x in args.batches.split(",")]:
        tok, dt = run_backend(backend, chats, params, bs)
        rows.append((f"transformers, batched (batch {bs})", tok / dt))
    if not args.no_llama_cpp:
        got = run_llama_cpp(chats[: args.sequential_prompts], args.max_new_tokens)
        if got:
            rows.append(("llama.cpp server, single stream (same GGUF)", got[0] / got[1]))
    print(f"{args.prompts} prompts, up to {args.max_new_tokens} new tokens each, temperature 0.7")
    print("| engine | tok/s | vs sequential |")
    print("|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} | {v / seq:.2f}x |")
    llama = [v for name, v in rows if name.startswith("llama.cpp")]
    best = max((v, name) for name, v in rows if "batched" in name)
    if llama:
        r = best[0] / llama[0]
        print(
            f"{best[1]}: {best[0]:.1f} tok/s vs llama.cpp single stream {llama[0]:.1f} tok/s (this build; the native build measured "
            f"{LLAMA_CPP_BEFORE} tok/s on 2026-11-27) = {r:.2f}x; target >= {TARGET_X:.0f}x: {'met' if r >= TARGET_X else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
