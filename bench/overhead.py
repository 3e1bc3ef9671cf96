"""Pipeline overhead: Prefect plus run-store time against model time, for the label flow at 1,000 pairs.

One in-process run of the real label flow (embedded labeler, both orders) over
hh-rlhf harmless-base pairs (or the shipped prompts' synthetic pairs when the
shared data is absent). Splits the flow's wall time into:

- model: time inside backend calls (the forward passes)
- labeler: prompt building, parsing, row building (outside backend calls)
- run store: Parquet shard writes
- Prefect and the rest: flow/task bookkeeping, reading input, batching, manifests

Prefect's temporary-server start-up (once per process) is reported on its own.

Usage: .venv/bin/python bench/overhead.py [--pairs 1000] [--batch-size 64] [--max-response-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-response-tokens", type=int, default=512)
    ap.add_argument("--max-context-tokens", type=int, default=1024)
    args = ap.parse_args()
    from label_throughput import load_pairs

    pairs, source = load_pairs(args.pairs)
    tmp = Path(tempfile.mkdtemp(prefix="aif-overhead-"))
    src = tmp / "pairs.jsonl"
    src.write_text("".join(json.dumps({"pair_id": p["pair_id"], "prompt": p["messages"], "response_a": p["response_a"], "response_b": p["response_b"]}) + "\n" for p in pairs))

    from flows.label import run_label
    from prefect import flow

    @flow(name="warm-up")
    def warm() -> None:  # starts Prefect's temporary server and loads the model, outside the timed run
        from aifeedback.config import BackendConfig
        from aifeedback.stage import cached_backend

        cached_backend(BackendConfig())

    t = time.perf_counter()
    warm()
    startup = time.perf_counter() - t
    overrides = {"input": str(src), "batch_size": args.batch_size, "max_response_tokens": args.max_response_tokens, "max_context_tokens": args.max_context_tokens}
    t0 = time.perf_counter()
    s = run_label(run_dir=str(tmp / "run"), overrides=overrides)
    wall = time.perf_counter() - t0
    from aifeedback.store import RunStore

    assert RunStore(tmp / "run").history()[-1]["n_in"] == s["n_in"]
    model, store = s["model_seconds"], s["store_seconds"]
    labeler = s["compute_seconds"] - model  # the job's compute time outside backend calls
    rest = wall - model - store - labeler
    print(f"{source}: {s['n_in']} pairs in = {s['n_out']} labelled + {s['n_excluded']} excluded; {s['batches']} batches of {args.batch_size}")
    print(f"Prefect temporary server start + model load (once per process): {startup:.1f} s")
    print("| part | seconds | share of flow wall time |")
    print("|---|---|---|")
    for name, v in (("model (backend calls)", model), ("labeler (prompts, rows)", labeler), ("run store (Parquet writes)", store), ("Prefect + input + rest", rest)):
        print(f"| {name} | {v:.2f} | {v / wall:.2%} |")
    print(f"| flow wall time | {wall:.2f} | 100% |")
    print(f"overhead (Prefect + run store + rest) / model time: {(store + rest) / model:.2%}")


if __name__ == "__main__":
    main()
