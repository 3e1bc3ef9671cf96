"""Hosted-judge path, measured against the real llama.cpp server (run under the CPU lock).

1. Rate limits: the label flow behind a proxy that answers 429 whenever more than K
   requests arrive in a second, once with adaptive concurrency (AIMD) and once with a
   fixed concurrency that is too high, side by side in one run: wall time, pairs
   labelled, 429s, the concurrency it settled at.
2. Estimate: ``estimate label`` (exact tokenizer) against the tokens the server
   reported for the real run of the same pairs.

    .venv/bin/python bench/rate_limit.py --pairs 12 --k 2 --concurrency 16 --estimate-pairs 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import SHARED_DATA, start_llama_server  # noqa: E402
from test_reliability import FaultProxy, _pairs_file  # noqa: E402


def label(src: Path, run: Path, port: int, backend: dict) -> tuple[dict, float]:
    from flows.label import run_label

    s = run_label(run_dir=str(run), overrides={"input": str(src), "batch_size": 64, "backend": {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{port}/v1", **backend}})
    return s, s["seconds"]  # the stage's own wall time: Prefect's start-up (first flow of the process) left out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--k", type=int, default=2, help="the proxy answers 429 above K requests a second")
    ap.add_argument("--concurrency", type=int, default=16, help="max_concurrency (fixed: too high for K)")
    ap.add_argument("--estimate-pairs", type=int, default=40)
    ap.add_argument("--no-rate", action="store_true", help="only the estimate part")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aif-rate-"))
    server = start_llama_server(tmp)
    out: dict = {}
    try:
        src = _pairs_file(tmp / "pairs.jsonl", a.pairs)
        retry = {"max_retries": 10, "backoff_base_s": 0.2, "backoff_max_s": 2.0, "max_concurrency": a.concurrency}
        for mode, adaptive in () if a.no_rate else (("adaptive", True), ("fixed", False)):
            proxy = FaultProxy(server.base_url, rate=0.0, slow_s=0.0, per_second=a.k).start()
            try:  # pairs that ran out of retries are excluded as backend_error and retried by the next run: re-run until all are labelled
                s, dt = label(src, tmp / f"run-{mode}", proxy.port, {**retry, "adaptive_concurrency": adaptive})
                first, runs = s["n_out"], 1
                while s["n_out"] < a.pairs and runs < 8:
                    s, more = label(src, tmp / f"run-{mode}", proxy.port, {**retry, "adaptive_concurrency": adaptive})
                    dt, runs = dt + more, runs + 1
            finally:
                proxy.stop()
            out[mode] = {"seconds_to_all_labelled": round(dt, 1), "runs": runs, "labelled_by_first_run": first, "labelled": s["n_out"], "n_in": s["n_in"], "429s": proxy.injected["429"], "concurrency": s.get("concurrency"), "concurrency_min": s.get("concurrency_min")}
        if not a.no_rate:
            out["fixed_over_adaptive_wall_time"] = round(out["fixed"]["seconds_to_all_labelled"] / out["adaptive"]["seconds_to_all_labelled"], 2)
        hh = SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
        if a.estimate_pairs and hh.is_file():
            from labelers.human_data import hh_pairs

            from flows.estimate import estimate

            pairs, _ = hh_pairs(hh, n=a.estimate_pairs)
            esrc = tmp / "hh.jsonl"
            esrc.write_text("".join(json.dumps({"pair_id": p["pair_id"], "prompt": p["messages"], "response_a": p["response_a"], "response_b": p["response_b"]}) + "\n" for p in pairs))
            proxy = FaultProxy(server.base_url, rate=0.0, slow_s=0.0, per_second=10_000).start()  # a tap that sums the server's usage
            try:
                ov = {"input": str(esrc), "batch_size": 64, "backend": {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.port}/v1", "max_concurrency": 2}}
                est = estimate("label", str(tmp / "run-est"), None, ov, tokenizer="embedded/smollm2-135m-instruct")
                approx = estimate("label", str(tmp / "run-est"), None, ov, tokenizer=None)
                s, dt = label(esrc, tmp / "run-est", proxy.port, {"max_concurrency": 2})
            finally:
                proxy.stop()
            real_p, real_c = proxy.usage["prompt_tokens"], proxy.usage["completion_tokens"]
            out["estimate"] = {
                "pairs": len(pairs),
                "requests": [est["requests"], proxy.usage["replies"]],
                "prompt_tokens_estimated_exact": est["prompt_tokens"],
                "prompt_tokens_estimated_approx": approx["prompt_tokens"],
                "prompt_tokens_served": real_p,
                "completion_tokens_estimated_max": est["completion_tokens_max"],
                "completion_tokens_served": real_c,
                "recorded_equals_served": (s["prompt_tokens"], s["completion_tokens"]) == (real_p, real_c),
                "error_total_exact_pct": round(100 * (est["tokens"] - real_p - real_c) / (real_p + real_c), 2),
                "error_total_approx_pct": round(100 * (approx["tokens"] - real_p - real_c) / (real_p + real_c), 2),
                "label_seconds": round(dt, 1),
            }
    finally:
        server.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
