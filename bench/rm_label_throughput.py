"""Reward-model labelling throughput (pairs per minute) on this CPU, with the RMLabelJob the label stage runs.

Pairs: PandaLM test-set pairs (../shared/data/pandalm), repeated to --n, each repeat with its own prompt text. Compared side by side in the same run:
the RM at its trained max_length and at half of it. Usage:
  flock /tmp/aif-cpu.lock .venv/bin/python bench/rm_label_throughput.py --rm runs/loop-rms-plain/labeler [--n 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rm", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from labelers.human_data import pandalm_items
    from labelers.rm_labeler import RMLabelJob, _head_config

    torch.set_num_threads(args.threads)
    items = [p for p in pandalm_items(REPO.parent / "shared" / "data" / "pandalm" / "testset-v1.json") if isinstance(p["response_a"], str) and isinstance(p["response_b"], str)]
    # each repeat of an item gets its own prompt text: the labeler scores a distinct (prompt, response) once,
    # so plain repeats would cost nothing and inflate the figure
    pairs = []
    for i in range(args.n):
        it = items[i % len(items)]
        msgs = [dict(m) for m in it["messages"]]
        msgs[-1]["content"] += f" ({i // len(items)})" if i >= len(items) else ""
        pairs.append(dict(it, messages=msgs, pair_id=f"{it['pair_id']}-{i}"))
    trained = int(_head_config(Path(args.rm)).get("max_length") or 256)
    print(f"{len(pairs)} PandaLM pairs (mean {sum(len(p['response_a']) + len(p['response_b']) for p in pairs) / len(pairs) / 2:.0f} chars per response), {args.threads} threads")
    for ml in (trained, trained // 2):
        job = RMLabelJob(args.rm, max_length=ml)
        job.compute(pairs[:32], "warm")  # model load and first pass
        t0 = time.perf_counter()
        rows, _, _ = job.compute(pairs, "k")
        dt = time.perf_counter() - t0
        print(f"max_length {ml}: {len(rows)} pairs in {dt:.1f} s = {len(rows) / dt * 60:,.0f} pairs/min")


if __name__ == "__main__":
    main()
