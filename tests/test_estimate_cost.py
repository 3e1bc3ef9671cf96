"""`estimate`: the cost at backend.prices and the time at the rate limits, against sums done by hand.

An endpoint has no local tokenizer here, so the estimate counts about 4 characters a
token plus 4 a message (flows/estimate.py), and completions at their upper bound
(max_new_tokens per sample; 4 tokens per scoring request). No model is called.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.estimate import estimate

BASE_URL = "http://127.0.0.1:9/v1"  # never contacted: the estimate sends nothing
SYSTEM = "Be terse"  # 8 characters


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt_id": "p40", "prompt": "a" * 40}, {"prompt_id": "p80", "prompt": "b" * 80}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_estimate_costs_tokens_times_prices(tmp_path):
    overrides = {
        "input": str(_prompts(tmp_path)),
        "id_column": "prompt_id",
        "system_prompt": SYSTEM,
        "sampling": {"n": 2, "max_new_tokens": 16},
        "backend": {"kind": "openai", "model": "m1", "base_url": BASE_URL, "prices": {"m1": {"input": 2.5, "output": 10.0}}, "requests_per_minute": 8, "tokens_per_minute": 164},
    }
    est = estimate("generate", str(tmp_path / "run"), None, overrides)
    # by hand: system + prompt, (8 + 40) // 4 + 2 x 4 = 20 and (8 + 80) // 4 + 2 x 4 = 30 tokens, each sent n = 2 times
    assert (est["requests"], est["prompt_tokens"], est["completion_tokens_max"], est["tokens"]) == (4, 100, 64, 164)
    # 100 prompt tokens at $2.5 a million + 64 completion tokens at $10 a million
    assert est["cost_usd"] == pytest.approx(0.000890, rel=1e-12)
    assert est["cost_usd_batch"] == pytest.approx(0.000445, rel=1e-12)  # through the Batch API: half, with no batch prices given
    # 4 requests at 8 a minute: 30 s; 164 tokens at 164 a minute: 60 s; the slower one
    assert est["seconds_at_rate_limits"] == 60.0
    assert not (tmp_path / "run" / "responses").exists()  # nothing computed or stored


def test_no_price_table_gives_no_cost(tmp_path):
    overrides = {"input": str(_prompts(tmp_path)), "backend": {"kind": "openai", "model": "m1", "base_url": BASE_URL}}
    est = estimate("generate", str(tmp_path / "run"), None, overrides)
    assert est["cost_usd"] is None and est["seconds_at_rate_limits"] is None and est["requests"] == 2


def test_label_estimate_prices_set_on_the_command_line(tmp_path):
    """`aifeedback estimate label --set backend.prices=...`: both orders of each pair, 4 completion tokens each, at the given prices."""
    from flows.cli import app

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"pair_id": f"p{i}", "prompt": "What is 2+2?", "response_a": "4", "response_b": f"{5 + i}"} for i in range(3)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["estimate", "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run"), "--backend", "openai", "--model", "smollm2", "--base-url", BASE_URL]
    args += ["--set", "backend.prices={smollm2: {input: 0.15, output: 0.60}}", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)
    assert est["requests"] == 6 and est["completion_tokens_max"] == 6 * 4  # the openai backend asks for 4 tokens when scoring
    assert est["prompt_tokens"] > 6 * 4  # each prompt holds the judge's template, not just the pair
    assert est["cost_usd"] == pytest.approx(est["prompt_tokens"] * 0.15 / 1e6 + 24 * 0.60 / 1e6, rel=1e-9)
