"""The openai backend against a real llama.cpp server process serving the embedded GGUF."""

import threading

import pytest

from aifeedback.backends.base import ScoringPrompt
from aifeedback.backends.openai_compat import OpenAIBackend
from aifeedback.config import BackendConfig, SamplingConfig
from aifeedback.errors import BackendError

pytestmark = pytest.mark.slow


def _backend(url: str, **kw) -> OpenAIBackend:
    return OpenAIBackend(BackendConfig(kind="openai", model="smollm2", base_url=url, **kw))


def test_generate_against_real_server(llama_server):
    b = _backend(llama_server.base_url, max_concurrency=2)
    chats = [[{"role": "user", "content": "Name a yellow fruit."}], [{"role": "user", "content": "What is 3 times 3?"}]]
    res = b.generate(chats, SamplingConfig(max_new_tokens=16, n=2), seeds=[[1, 2], [3, 4]])
    assert len(res) == 2
    for r in res:
        assert r.error is None, r.error
        assert len(r.completions) == 2
        assert all(c.text.strip() and c.completion_tokens > 0 for c in r.completions)


def test_choice_probs_against_real_server(llama_server):
    b = _backend(llama_server.base_url)
    prompt = ScoringPrompt([{"role": "user", "content": "Which number is larger, 1 or 2? Reply with just the digit."}])
    (r,) = b.choice_probs([prompt], ["1", "2"])
    assert r.source == "logprobs", (r.error, r.raw)
    assert r.probs is not None and abs(sum(r.probs) - 1) < 1e-9
    assert any(lp is not None for lp in r.logprobs)


def _echo_prompt(digit: str) -> ScoringPrompt:
    """A chat whose greedy answer is the digit: the tiny model copies the two answers before it."""
    turn = {"role": "user", "content": f"Reply with the digit {digit}."}
    return ScoringPrompt([turn, {"role": "assistant", "content": digit}, turn, {"role": "assistant", "content": digit}, turn])


def test_fallback_to_parsed_verdict_without_logprobs(llama_server):
    b = _backend(llama_server.base_url, top_logprobs=0)
    assert not b.capabilities.logprobs
    r1, r2 = b.choice_probs([_echo_prompt("1"), _echo_prompt("2")], ["1", "2"])  # greedy: scoring always sends temperature 0
    for r, want in ((r1, [1.0, 0.0]), (r2, [0.0, 1.0])):
        assert r.source == "parsed", (r.source, r.error, r.raw)
        assert r.probs == want and r.raw is not None and r.raw.strip().startswith(str(want.index(1.0) + 1))
        assert r.logprobs == [None, None] and r.error is None  # a hard verdict read from the text, not log-probs


@pytest.mark.timeout(180)  # a dead server must not hang the client (the server's own start is inside this)
def test_server_killed_mid_run_gives_clear_error(tmp_path):
    from conftest import start_llama_server

    server = start_llama_server(tmp_path)
    b = _backend(server.base_url, timeout_s=5, max_retries=2, backoff_base_s=0.1, backoff_max_s=0.5, max_concurrency=2)
    chats = [[{"role": "user", "content": f"Count from 1 to 50, item {i}."}] for i in range(6)]
    killer = threading.Timer(1.0, server.stop)
    killer.start()
    try:
        with pytest.raises(BackendError, match="unreachable|failed after 2 retries"):
            for _ in range(5):  # keep it busy until the kill lands
                res = b.generate(chats, SamplingConfig(max_new_tokens=64))
                if any(r.error for r in res):
                    raise BackendError("; ".join(r.error for r in res if r.error))
    finally:
        killer.cancel()
        server.stop()
        b.close()


def test_hosted_endpoint_without_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        _backend("https://api.example.invalid/v1")


def test_key_never_in_repr(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-123")
    b = _backend("https://api.example.invalid/v1")
    assert b._key == "sk-test-SECRET-123"  # read from the environment...
    assert "SECRET" not in repr(b) and "SECRET" not in b.cfg.model_dump_json()  # ...and not shown or stored in the config


def test_label_flow_through_real_server(llama_server, tmp_path):
    """Both-order labelling end to end over HTTP: every pair labelled or excluded, orders adjacent for the prefix cache."""
    import json

    from flows.label import run_label
    from aifeedback.store import RunStore

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(p) + "\n"
            for p in [
                {"pair_id": "a", "prompt": "What is 2+2?", "response_a": "4", "response_b": "5"},
                {"pair_id": "b", "prompt": "Name a colour.", "response_a": "Blue.", "response_b": "Seven."},
                {"pair_id": "c", "prompt": "Say hi.", "response_a": "hi", "response_b": "hi"},
            ]
        )
    )
    s = run_label(run_dir=str(tmp_path / "run"), overrides={"input": str(pairs), "backend": {"kind": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 2}})
    assert s["n_in"] == 3 == s["n_out"] + s["n_excluded"] and s["n_out"] == 2
    rows = RunStore(tmp_path / "run").read_table("labels").to_pylist()
    # the llama.cpp server returns log-probs: a label read from the reply's text instead means reading them broke
    assert [r["prob_source"] for r in rows] == ["logprobs"] * len(rows), [(r["pair_id"], r["prob_source"]) for r in rows]
    assert all(r["backend"] == "openai" and 0 <= r["p_a"] <= 1 for r in rows)
