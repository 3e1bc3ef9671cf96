"""Streaming: a million pairs through the label flow with an instant arithmetic backend.

Measures what surrounds the model - reading the input as a stream, batching,
prompt building for both orders, Prefect tasks, Parquet shards - at a size where
loading whole datasets would show. Each size runs in its own process so peak RSS
is that run's alone; memory is flat when the peak does not grow with the size.

Usage: .venv/bin/python bench/streaming.py [--sizes 100000,1000000] [--batch-size 8192]
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

    from flows.label import label_flow

    th = threading.Thread(target=sample, daemon=True)
    base_rss = proc.memory_info().rss
    th.start()
    t0 = time.perf_counter()
    s = label_flow(
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
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.batch_size, Path(args.workdir), args.runner, args.workers)), flush=True)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="aif-stream-") as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--batch-size", str(args.batch_size), "--workdir", tmp, "--runner", args.runner] + (["--workers", str(args.workers)] if args.workers else []), capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"size {n} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results.append(json.loads(line[7:]))
    print("| pairs | runner | n_out + excluded | flow s | pairs/s (flow) | pairs/s (stage) | store s | peak RSS MB (first half / whole run) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['pairs']:,} | {r['runner']} | {r['n_out']:,} + {r['n_excluded']} | {r['flow_seconds']} | {r['pairs_per_s_flow']:,} | {r['pairs_per_s_stage']:,} | {r['store_seconds']} | {r['rss_peak_first_half_mb']} / {r['rss_peak_mb']} |")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
