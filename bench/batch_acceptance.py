"""#28's acceptance: N hh-rlhf pairs labelled through batch mode against a local Batch API stand-in, killed
during polling and resumed, with the cost table synchronous against batch.

The endpoint is the llama.cpp server with the embedded SmolLM2-135M; the Batch API in front of it is
tests/batch_standin.py, a stand-in shaped like OpenAI's (files, batches), not OpenAI. The label command
runs as a subprocess with --batch; it is killed with SIGKILL once its batches are recorded and it is polling,
then run again: the stand-in counts batch creations, which must equal the first run's.

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/batch_acceptance.py --out runs/batch-accept [--n 1000] [--max-requests 500]
Writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))

PRICES = {"smollm2": {"input": 2.50, "output": 10.00}}  # a hosted judge's list prices per million tokens (gpt-4o's, for scale); batch: half


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    from aifeedback.models import smollm2_gguf

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"llama.cpp server did not start: see {log}")


def pairs_file(dest: Path, n: int) -> Path:
    from labelers.human_data import hh_pairs

    pairs, _ = hh_pairs(DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", n)
    with open(dest, "w") as fh:
        for p in pairs:
            fh.write(json.dumps({"pair_id": p["pair_id"], "prompt": p["messages"], "response_a": p["response_a"], "response_b": p["response_b"]}) + "\n")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/batch-accept")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-requests", type=int, default=500, help="backend.batch_max_requests: 2 requests a pair, so 1000 pairs make 4 files")
    args = ap.parse_args()
    from batch_standin import BatchStandin

    from aifeedback.batch_files import BatchBook
    from aifeedback.store import RunStore
    from aifeedback.usage import cost

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    src = pairs_file(out / "pairs.jsonl", args.n)
    llama, upstream = start_llama(out / "llama-server.log")
    exe = REPO / ".venv" / "bin" / "aifeedback"
    result: dict = {"n_pairs_file": args.n}
    try:
        with BatchStandin(upstream_base_url=upstream) as standin:
            base = f"{standin.url}/v1"
            cmd = [str(exe), "label", "--input", str(src), "--run-dir", str(run), "--backend", "openai", "--model", "smollm2", "--base-url", base, "--batch",
                   "--set", "batch_size=100", "--set", "backend.batch_poll_s=2", "--set", f"backend.batch_max_requests={args.max_requests}",
                   "--set", "backend.prices.smollm2.input=2.5", "--set", "backend.prices.smollm2.output=10.0"]
            t0 = time.time()
            proc = subprocess.Popen(cmd, stdout=open(out / "first.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
            # kill once every batch is recorded and some requests are done: the client is polling
            while True:
                time.sleep(1)
                recs = BatchBook(run, "labels").records() if (run / "batch_api" / "labels").is_dir() else []
                done = sum(b.completed for b in standin.batches.values())
                if recs and all(r.get("batch_id") for r in recs) and done >= 50:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"the first run ended before it could be killed: see {out / 'first.log'}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            first = {"batches_created": standin.creations, "files": len(recs), "requests_done_at_kill": done, "killed_after_s": round(time.time() - t0, 1)}
            print("killed:", first, flush=True)
            t1 = time.time()
            second = subprocess.run(cmd, stdout=open(out / "second.log", "w"), stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
            if second.returncode != 0:
                raise SystemExit(f"the resumed run failed: see {out / 'second.log'}")
            store = RunStore(run)
            m = store.manifest("labels")
            labels = store.read_table("labels")
            excluded = store.read_table("labels", excluded=True)
            keys = labels.column("item_key").to_pylist() + excluded.column("item_key").to_pylist()
            tokens = [json.loads(x) for x in (run / "usage.jsonl").read_text().splitlines()]
            pt, ct = sum(t["prompt_tokens"] for t in tokens), sum(t["completion_tokens"] for t in tokens)
            sent = [f.custom_id for f in standin.forwarded]  # requests the stand-in ran against the model
            result.update(
                first_run=first,
                resumed_s=round(time.time() - t1, 1),
                batches_created_total=standin.creations,
                files=len(BatchBook(run, "labels").records()),
                n_in=m["n_in"], n_labelled=m["n_out"], n_excluded=m["n_excluded"],
                duplicates=len(keys) - len(set(keys)),
                excluded_reasons=sorted(set(excluded.column("reason").to_pylist())),
                batch_ids=sorted(set(labels.column("batch_id").to_pylist())),
                requests_run_by_the_endpoint=len(sent),
                requests_run_twice=len(sent) - len(set(sent)),
                tokens={"prompt": pt, "completion": ct},
                cost_usd={"synchronous": cost(PRICES, "smollm2", pt, ct), "batch": cost(PRICES, "smollm2", pt, ct, batch=True), "recorded": sum(t["cost_usd"] for t in tokens)},
                prices=PRICES,
            )
    finally:
        llama.terminate()
        llama.wait(30)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
