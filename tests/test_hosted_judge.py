"""The hosted-judge path: rate limits that adapt, token and cost accounting, estimates before spending.

The server tests run the label flow against the real llama.cpp server through the
proxy of test_reliability.py, which sums the server's own ``usage`` replies.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from typer.testing import CliRunner

from aifeedback.ratelimit import AdaptiveLimiter, TokenBucket
from aifeedback.store import RunStore
from aifeedback import usage

PRICES = {"smollm2": {"input": 0.15, "output": 0.60}}


# -- the limiter, without a server ----------------------------------------------------------------


def test_aimd_halves_once_per_burst_and_grows_back():
    lim = AdaptiveLimiter(8, cooldown_s=60.0)
    for _ in range(5):  # one burst of 429s: one cut
        lim.on_response(429, {})
    assert lim.concurrency == 4 and lim.rate_limited == 5 and lim.window_min == 4
    lim._last_cut -= 61  # the cool-down has passed
    lim.on_response(200, {"x-ratelimit-remaining-requests": "0"})  # an exhausted budget header also cuts
    assert lim.concurrency == 2
    for _ in range(3):  # additive increase: about one slot per window of successes
        lim.on_success()
    assert lim.concurrency == 3
    for _ in range(100):
        lim.on_success()
    assert lim.concurrency == 8  # never above max_concurrency
    fixed = AdaptiveLimiter(8, adaptive=False)
    fixed.on_response(429, {})
    assert fixed.concurrency == 8 and fixed.rate_limited == 1


def test_slots_are_first_come_first_served():
    """With one slot, requests run in the order they asked: a pair's two orders stay adjacent."""

    async def main():
        lim = AdaptiveLimiter(1)
        order = []

        async def one(i):
            await lim.acquire()
            try:
                order.append(i)
                await asyncio.sleep(0)
            finally:
                lim.release()

        await asyncio.gather(*(one(i) for i in range(10)))
        return order, lim.in_flight

    order, in_flight = asyncio.run(main())
    assert order == list(range(10)) and in_flight == 0


def test_token_bucket_waits_for_the_budget():
    b = TokenBucket(per_minute=120)  # 2 a second, one second saved up
    assert b.capacity == 2 and b.wait_time(1) == 0
    b.take(2)
    assert 0.4 < b.wait_time(1) <= 0.5  # half a second for the next one
    big = TokenBucket(per_minute=600)  # a request larger than the bucket waits for a full bucket, not forever
    big.take(10)
    assert big.wait_time(10_000) <= 1.0 + 1e-6


def test_usage_meters_are_per_thread_and_costs_follow_the_price_table():
    import threading

    seen = {}

    def worker(name, n):
        with usage.meter() as m:
            for _ in range(n):
                usage.record(10, 2)
        seen[name] = (m.requests, m.prompt_tokens, m.completion_tokens)

    ts = [threading.Thread(target=worker, args=(f"t{i}", i + 1)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert seen == {f"t{i}": (i + 1, 10 * (i + 1), 2 * (i + 1)) for i in range(4)}
    assert usage.cost(PRICES, "smollm2", 1_000_000, 2_000_000) == pytest.approx(0.15 + 1.20)
    assert usage.cost({}, "smollm2", 10, 10) is None


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["backend.prices={gpt-4o: {input: 1, output: 2}}"], "no entry for model 'smollm2'"),
        (["backend.requests_per_minute=-5"], "backend.requests_per_minute"),
        (["backend.tokens_per_minute=-1"], "backend.tokens_per_minute"),
        (["backend.prices={smollm2: {input: -1, output: 2}}"], "backend.prices"),
        (["backend.base_url=127.0.0.1:8080/v1"], "must start with http:// or https://"),
    ],
)
def test_bad_budgets_prices_and_urls_exit_2(tmp_path, sets, needle):
    from flows.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"pair_id": "a", "prompt": "Hi?", "response_a": "Hi.", "response_b": "Bye."}) + "\n")
    args = ["--input", str(pairs), "--run-dir", str(tmp_path / "run"), "--backend", "openai", "--model", "smollm2"]
    args += ["--base-url", "http://127.0.0.1:9/v1"] if not any("base_url" in s for s in sets) else []
    for cmd in (["estimate", "label"], ["label"]):
        res = CliRunner().invoke(app, cmd + args + [x for s in sets for x in ("--set", s)])
        assert res.exit_code == 2, (cmd, res.output)
        assert needle in " ".join(res.output.split()), res.output
    assert not (tmp_path / "run").exists()  # refused before anything ran


# -- against the real llama.cpp server ------------------------------------------------------------


def _hh_pairs(path, n):
    from labelers.human_data import hh_pairs

    pairs, _ = hh_pairs(path, n=n)
    return [{"pair_id": p["pair_id"], "prompt": p["messages"], "response_a": p["response_a"], "response_b": p["response_b"]} for p in pairs]


@pytest.mark.slow
def test_tokens_cost_and_estimate_against_the_server(llama_server, shared_data, tmp_path):
    """Recorded tokens == the server's own usage sums; cost == tokens x prices in `runs` and the export card;
    `estimate` within 5% of the real token count, and nothing to spend once the run is done."""
    from test_reliability import FaultProxy

    from flows.cli import app
    from flows.estimate import estimate
    from flows.label import run_label

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in _hh_pairs(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", 6)))
    proxy = FaultProxy(llama_server.base_url, rate=0.0, slow_s=0.0, per_second=10_000).start()  # no faults: a counting tap
    backend = {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.port}/v1", "max_concurrency": 2, "prices": PRICES}
    overrides = {"input": str(src), "batch_size": 4, "backend": backend}
    run = tmp_path / "run"
    try:
        est = estimate("label", str(run), None, overrides, tokenizer="embedded/smollm2-135m-instruct")
        assert proxy.usage["replies"] == 0  # no model call
        s = run_label(run_dir=str(run), overrides=overrides)
    finally:
        proxy.stop()
    assert s["complete"] and s["n_out"] == 6
    served = proxy.usage
    assert served["replies"] == s["requests"] == 12
    assert s["prompt_tokens"] == served["prompt_tokens"] and s["completion_tokens"] == served["completion_tokens"]
    batches = usage.read(run)
    assert len(batches) == 2 and sum(b["prompt_tokens"] for b in batches) == served["prompt_tokens"]
    want_cost = served["prompt_tokens"] * 0.15 / 1e6 + served["completion_tokens"] * 0.60 / 1e6
    assert s["cost_usd"] == pytest.approx(want_cost, rel=1e-9)
    # the estimate: exact tokenizer, so prompts within 5%; completions are an upper bound (max_tokens)
    assert est["requests"] == 12 and est["items_to_compute"] == 6
    assert abs(est["prompt_tokens"] - served["prompt_tokens"]) <= 0.05 * served["prompt_tokens"], (est, dict(served))
    real_total = served["prompt_tokens"] + served["completion_tokens"]
    assert abs(est["tokens"] - real_total) <= 0.05 * real_total
    print(f"estimate {est['prompt_tokens']}+{est['completion_tokens_max']} vs served {served['prompt_tokens']}+{served['completion_tokens']}")
    # `runs --run-dir` shows them, and the cost is tokens x prices
    res = CliRunner().invoke(app, ["runs", "--run-dir", str(run), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    inv = [r for r in shown["invocations"] if r["stage"] == "labels"][-1]
    assert (inv["prompt_tokens"], inv["completion_tokens"]) == (served["prompt_tokens"], served["completion_tokens"])
    assert inv["cost_usd"] == pytest.approx(want_cost) and shown["totals"]["labels"]["cost_usd"] == pytest.approx(want_cost)
    # a finished run: the estimate counts nothing to spend
    again = estimate("label", str(run), None, overrides, tokenizer="embedded/smollm2-135m-instruct")
    assert again["items_reused"] == 6 and again["requests"] == 0 and again["cost_usd"] == 0
    # the export card carries the totals
    from flows.export import run_export

    run_export(run_dir=str(run), to_dir=str(tmp_path / "export"))
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"| labels | 2 | 12 | 0 | {served['prompt_tokens']} | {served['completion_tokens']} | {want_cost:.6f} |" in card  # 0: none through the Batch API


@pytest.mark.slow
def test_label_flow_adapts_to_a_rate_limited_endpoint(llama_server, tmp_path, caplog):
    """429 whenever more than K requests arrive in a second: every pair is labelled and the concurrency settles lower."""
    from test_reliability import FaultProxy, _pairs_file

    from flows.label import run_label

    n, k = 10, 2
    src = _pairs_file(tmp_path / "pairs.jsonl", n)
    proxy = FaultProxy(llama_server.base_url, rate=0.0, slow_s=0.0, per_second=k).start()
    backend = {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.port}/v1", "max_concurrency": 8, "max_retries": 10, "backoff_base_s": 0.2, "backoff_max_s": 2.0}
    try:
        with caplog.at_level(logging.INFO, logger="aifeedback"):
            s = run_label(run_dir=str(tmp_path / "run"), overrides={"input": str(src), "batch_size": 10, "backend": backend})
    finally:
        proxy.stop()
    assert s["complete"] and s["n_out"] == n and s["n_excluded"] == 1  # every pair labelled (the one bad row excluded on input)
    assert proxy.injected["429"] > 0 and s["rate_limited_total"] == proxy.injected["429"]
    assert s["concurrency_min"] < 8 and s["concurrency"] <= 8
    last = RunStore(tmp_path / "run").history()[-1]
    assert last["concurrency"] == s["concurrency"] and last["concurrency_min"] == s["concurrency_min"]  # in history.jsonl
    assert any("rate limited (HTTP 429): concurrency 8 -> 4" in r.getMessage() for r in caplog.records)  # and in the log
    print(f"429s {proxy.injected['429']}, concurrency settled at {s['concurrency']} (lowest {s['concurrency_min']}), retries {s['retries']}")


@pytest.mark.slow
def test_local_backend_counts_exactly_and_the_estimate_matches(embedded_backend, tmp_path):
    """transformers: the recorded tokens are the tokenizer's counts, and `estimate` (same tokenizer) predicts them exactly."""
    from test_reliability import _pairs_file

    from flows.estimate import estimate
    from flows.label import run_label

    src = _pairs_file(tmp_path / "pairs.jsonl", 3)
    overrides = {"input": str(src), "batch_size": 2}
    est = estimate("label", str(tmp_path / "run"), None, overrides)
    assert est["token_method"].startswith("exact") and est["items_to_compute"] == 4  # the empty-response row is excluded by the labeler, not on input
    s = run_label(run_dir=str(tmp_path / "run"), overrides=overrides)
    assert s["complete"] and s["n_out"] == 3
    assert (s["requests"], s["prompt_tokens"], s["completion_tokens"]) == (est["requests"], est["prompt_tokens"], 0)
    assert s["requests"] >= 6  # both orders of 3 pairs
    assert s["tokens_exact"] and s["cost_usd"] is None  # no price table: no cost
