"""Time to first batch: from typing `aifeedback label` to the first batch's model call, with and without Prefect.

Each command labels 4 pairs (one batch) with the embedded labeler from its
converted cache, in a fresh process, as a user would run it. Three set-ups,
alternating over the rounds (database made by an untimed warm-up command first):

- local: no Prefect API configured and no shared server: the command runs
  in-process and imports no Prefect (the default);
- shared: a shared Prefect server already running (`aifeedback server start`,
  timed once and reported apart): the command runs as a Prefect flow on it;
- temporary: ``--prefect`` with ``AIFEEDBACK_PREFECT_SERVER=temporary``: a
  Prefect flow on Prefect's per-process server, in its own PREFECT_HOME.

The first model call is not visible from outside, so it is computed from the run
store: the batch's shard is written right after its model call, so
``shard mtime - launch - model seconds - store seconds`` is when the call began
(history.jsonl holds the model and store seconds).

Usage: .venv/bin/python bench/first_batch.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIF = str(Path(sys.executable).parent / "aifeedback")
TARGET_S = 10.0


MODES = ("local", "shared", "temporary")


def env_for(home: Path, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AIFEEDBACK_PREFECT_SERVER", "AIFEEDBACK_PREFECT")}
    env.update(PREFECT_HOME=str(home), HF_HUB_OFFLINE="1", AIFEEDBACK_PREFECT_SERVER="temporary" if mode == "temporary" else "shared")
    if mode == "temporary":
        env["AIFEEDBACK_PREFECT"] = "1"  # --prefect
    return env


def one(home: Path, mode: str, pairs: Path, run_dir: Path) -> dict:
    t_launch = time.time()
    out = subprocess.run([AIF, "label", "--input", str(pairs), "--run-dir", str(run_dir)], cwd=REPO, env=env_for(home, mode), capture_output=True, text=True)
    wall = time.time() - t_launch
    if out.returncode != 0:
        sys.exit(f"{mode}: aifeedback label failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    shards = [p for p in (run_dir / "labels").glob("*.parquet") if not p.name.endswith(".excluded.parquet") and not p.name.startswith("_")]
    h = [e for e in (json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()) if e.get("stage") == "labels"][-1]
    first_shard = min(p.stat().st_mtime for p in shards)
    first_call = first_shard - t_launch - h["model_seconds"] - h["store_seconds"]
    return {"mode": mode, "wall_s": round(wall, 2), "first_model_call_s": round(first_call, 2), "model_s": h["model_seconds"], "batches": h["batches"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aif-first-batch-"))
    pairs = tmp / "pairs.jsonl"
    rows = [{"pair_id": f"p{i}", "prompt": f"Give me a tip for day {i}.", "response_a": "Drink water and sleep well.", "response_b": "No."} for i in range(4)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    homes = {"local": tmp / "home-local", "shared": tmp / "home-shared", "temporary": tmp / "home-temporary"}
    t = time.time()
    start = subprocess.run([AIF, "server", "start"], cwd=REPO, env=env_for(homes["shared"], "shared"), capture_output=True, text=True)
    server_start = time.time() - t
    if start.returncode != 0:
        sys.exit(f"aifeedback server start failed:\n{start.stdout}\n{start.stderr}")
    results: list[dict] = []
    try:
        for mode in MODES:  # untimed: each home's database, the converted model cache
            one(homes[mode], mode, pairs, tmp / f"warm-up-{mode}")
        for r in range(args.rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                res = one(homes[mode], mode, pairs, tmp / f"run-{mode}-{r}")
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        subprocess.run([AIF, "server", "stop"], cwd=REPO, env=env_for(homes["shared"], "shared"), capture_output=True, text=True)
    med = {m: {k: statistics.median(x[k] for x in results if x["mode"] == m) for k in ("wall_s", "first_model_call_s")} for m in MODES}
    print(f"\nshared server start (once, `aifeedback server start`, new database): {server_start:.1f} s")
    print(f"4 pairs, one batch, embedded labeler; medians of {args.rounds} rounds, alternating\n")
    print("| Prefect | command to first model call, s | whole command, s |")
    print("|---|---|---|")
    for m in MODES:
        print(f"| {m} | {med[m]['first_model_call_s']:.1f} | {med[m]['wall_s']:.1f} |")
    w, s, t_ = (med[m]["first_model_call_s"] for m in MODES)
    print(f"\nfirst model call: local (no Prefect) {w:.1f} s vs shared server {s:.1f} s ({s / w:.2f}x) vs temporary server {t_:.1f} s ({t_ / w:.2f}x); target < {TARGET_S:.0f} s: {'met' if w < TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
