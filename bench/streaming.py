"""Streaming: a million pairs through the label flow with an instant arithmetic backend.

Measures what surrounds the model - reading the input as a stream, batching,
prompt building for both orders, Prefect tasks, Parquet shards - at a size where
loading whole datasets would show. Each size runs in its own process so peak RSS
is that run's alone; memory is flat when the peak does not grow with the size.

Usage: .venv/bin/python bench/streaming.py [--sizes 100000,1000000] [--batch-size 8192] [--baseline OLD_CHECKOUT --baseline-sizes 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_PAIRS_S = 20_000  # issue 18: 1,000,000 pairs at >= 20k pairs/s
TARGET_RSS_MB = 1536  # ... with peak RSS under 1.5 GB
BEFORE_PAIRS_S = 4_606  # the per-pair labeler at 1,000,000 pairs (stage), docs/performance.md


def write_pairs(path: Path, n: int, chunk: int = 65536) -> None:
    """n synthetic pairs, written a row group at a time (the writer never holds the whole set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("pair_id", pa.string()), ("prompt", pa.string()), ("response_a", pa.string()), ("response_b", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for s in range(0, n, chunk):
            ids = range(s, min(n, s + chunk))
            w.write_table(
                pa.table(
                    {
                        "pair_id": [f"s{i:08d}" for i in ids],
                        "prompt": [f"What is {i} plus {i % 97}? Answer in one sentence." for i in ids],
                        "response_a": [f"{i} plus {i % 97} is {i + i % 97}." for i in ids],
                        "response_b": [f"It is {i * 2 + 1}, I think." for i in ids],
                    },
                    schema=schema,
                )
            )


def run_one(n: int, batch_size: int, workdir: Path, runner: str = "sequential", workers: int | None = None) -> dict:
    """One size, in this process: the label flow over n pairs; returns throughput and memory."""
    import psutil

    sys.path.insert(0, str(REPO / "bench"))
    src = workdir / f"pairs-{n}.parquet"
    t = time.perf_counter()
    write_pairs(src, n)
    write_s = time.perf_counter() - t
    proc = psutil.Process()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), proc.memory_info().rss))
            stop.wait(0.25)

    from flows.label import run_label

    th = threading.Thread(target=sample, daemon=True)
    base_rss = proc.memory_info().rss
    th.start()
    t0 = time.perf_counter()
    s = run_label(
        run_dir=str(workdir / f"run-{n}"),
        overrides={"input": str(src), "batch_size": batch_size, "backend": {"kind": "instant_backend:InstantBackend", "model": "arith"}},
        runner=runner,
        workers=workers,
    )
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    rss = [r for _, r in samples]
    half = [r for ts, r in samples if ts - t0 < wall / 2]
    import resource

    return {
        "pairs": n,
        "batch_size": batch_size,
        "runner": runner,
        "worker_processes": s["worker_processes"],
        "n_in": s["n_in"],
        "n_out": s["n_out"],
        "n_excluded": s["n_excluded"],
        "flow_seconds": round(wall, 2),
        "stage_seconds": s["seconds"],
        "pairs_per_s_flow": round(n / wall),
        "pairs_per_s_stage": round(n / s["seconds"]),
        "model_seconds": s["model_seconds"],
        "store_seconds": s["store_seconds"],
        "rss_before_mb": round(base_rss / 2**20),
        "rss_peak_first_half_mb": round(max(half or rss) / 2**20),
        "rss_peak_mb": round(max(rss) / 2**20),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "input_write_seconds": round(write_s, 1),
        "input_mb": round(src.stat().st_size / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--runner", default="sequential", help="sequential, threads or ray (RSS is the driver's)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--baseline", help="an older checkout (e.g. a git worktree) to measure side by side, same sizes")
    ap.add_argument("--baseline-sizes", help="sizes for the baseline (default: --sizes)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.batch_size, Path(args.workdir), args.runner, args.workers)), flush=True)
        return
    results = []
    baseline = []
    with tempfile.TemporaryDirectory(prefix="aif-stream-") as tmp:
        runs = [(REPO, int(x)) for x in args.sizes.split(",")]
        if args.baseline:  # the same sizes with an older checkout's flow (this bench's instant backend)
            runs = [(Path(args.baseline).resolve(), int(x)) for x in (args.baseline_sizes or args.sizes).split(",")] + runs
        for repo, n in runs:
            work = Path(tmp) / ("this" if repo == REPO else "baseline")  # its own run store: never reuse the other code's shards
            work.mkdir(exist_ok=True)
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--batch-size", str(args.batch_size), "--workdir", str(work), "--runner", args.runner] + (["--workers", str(args.workers)] if args.workers else []), capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"size {n} ({repo}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            (results if repo == REPO else baseline).append({**json.loads(line[7:]), "code": "this checkout" if repo == REPO else f"baseline {repo}"})
    print("| code | pairs | runner | n_out + excluded | flow s | pairs/s (flow) | pairs/s (stage) | store s | peak RSS MB (first half / whole run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in baseline + results:
        print(f"| {r['code']} | {r['pairs']:,} | {r['runner']} | {r['n_out']:,} + {r['n_excluded']} | {r['flow_seconds']} | {r['pairs_per_s_flow']:,} | {r['pairs_per_s_stage']:,} | {r['store_seconds']} | {r['rss_peak_first_half_mb']} / {r['rss_peak_mb']} |")
    for b in baseline:
        same = [r for r in results if r["pairs"] == b["pairs"]]
        if same:
            print(f"{b['pairs']:,} pairs, stage pairs/s: this checkout {same[0]['pairs_per_s_stage']:,} vs baseline {b['pairs_per_s_stage']:,} = {same[0]['pairs_per_s_stage'] / b['pairs_per_s_stage']:.2f}x")
    print(json.dumps(results, indent=1))
    for r in results:
        stage, flow_ = r["pairs_per_s_stage"], r["pairs_per_s_flow"]
        print(
            f"{r['pairs']:,} pairs: stage {stage:,} pairs/s = {stage / TARGET_PAIRS_S:.2f}x the {TARGET_PAIRS_S:,} target ({'met' if stage >= TARGET_PAIRS_S else 'NOT met'}); "
            f"flow incl. Prefect start {flow_:,} pairs/s = {flow_ / TARGET_PAIRS_S:.2f}x ({'met' if flow_ >= TARGET_PAIRS_S else 'NOT met'}); "
            f"peak RSS {r['rss_peak_mb']} MB vs {TARGET_RSS_MB} MB ({'met' if r['rss_peak_mb'] < TARGET_RSS_MB else 'NOT met'}); "
            f"vs the per-pair labeler's {BEFORE_PAIRS_S:,} pairs/s (docs/performance.md, 2026-11-27): {stage / BEFORE_PAIRS_S:.2f}x"
        )


if __name__ == "__main__":
    main()
