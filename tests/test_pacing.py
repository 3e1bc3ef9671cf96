"""The openai backend's pacing and retry promises, measured where the requests arrive.

Every test sends real HTTP through the backend (the official client, its retries, the
limiter) to the fault proxy of test_reliability.py with nothing behind it: the proxy
is then a stand-in for an OpenAI-compatible endpoint (see ``FaultProxy``), answering
chat completions with a known ``usage``. The proxy stamps each request's arrival, so
the checks are counts per window and the order of events, not speeds.

Budgets (aifeedback/ratelimit.py): a token bucket refilled at ``budget / 60`` a second
that holds one second's worth, full at the start. So in any window of W seconds at
most ``capacity + rate * W`` is spent: the bound checked here.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from aifeedback.backends.openai_compat import OpenAIBackend
from aifeedback.config import BackendConfig, SamplingConfig
from aifeedback.ratelimit import AdaptiveLimiter

from test_reliability import fault_proxy  # noqa: F401  (a fixture)


@pytest.fixture
def backend(monkeypatch):
    """``backend(url, **settings)``: an openai backend on a local URL (no key), closed after the test."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    made: list[OpenAIBackend] = []

    def make(url: str, **kw) -> OpenAIBackend:
        made.append(OpenAIBackend(BackendConfig(kind="openai", model="smollm2", base_url=url, **kw)))
        return made[-1]

    yield make
    for b in made:
        b.close()


def _chats(n: int, chars: int = 44) -> list[list[dict]]:
    """n one-message chats of ``chars`` characters: the backend budgets ``chars // 4 + 4`` prompt tokens for each."""
    return [[{"role": "user", "content": f"{i:02d}" + "x" * (chars - 2)}] for i in range(n)]


def _most_in_window(points: list[tuple[float, float]], width: float) -> float:
    """The largest sum of weights of the (time, weight) points in any window [t, t + width)."""
    pts = sorted(points)
    return max(sum(w for t, w in pts[i:] if t < t0 + width) for i, (t0, _) in enumerate(pts))


def _all_answered(results) -> None:
    errors = [r.error for r in results if r.error]
    assert not errors, errors


@pytest.mark.timeout(60)
def test_requests_per_minute_caps_requests_in_any_window(fault_proxy, backend):  # noqa: F811
    proxy = fault_proxy(None, script=())
    b = backend(proxy.base_url, requests_per_minute=300, max_concurrency=32)  # 5 a second, 5 saved up
    assert b.limiter.rpm.capacity == 5  # one second's worth
    _all_answered(b.generate(_chats(20), SamplingConfig(max_new_tokens=1)))
    arrivals = [(p.t, 1) for p in proxy.posts]
    assert len(arrivals) == 20 and not proxy.injected and not proxy.upstream_errors
    for width in (1.0, 2.0):  # at most capacity + rate x width: 10 in any second, 15 in any two
        most = _most_in_window(arrivals, width)
        assert most <= 5 + 5 * width, f"{most} requests arrived within {width} s under 300 RPM (5 a second, 5 saved up)"
        print(f"300 RPM: at most {most} requests in {width} s (bound {5 + 5 * width:.0f})")


@pytest.mark.timeout(60)
def test_tokens_per_minute_caps_tokens_in_any_window(fault_proxy, backend):  # noqa: F811
    proxy = fault_proxy(None, script=(), reply_usage=(15, 5))  # the endpoint's usage: 20 tokens a request...
    b = backend(proxy.base_url, tokens_per_minute=6000, max_concurrency=32)  # 100 a second, 100 saved up
    assert b.limiter.tpm.capacity == 100
    _all_answered(b.generate(_chats(20, chars=44), SamplingConfig(max_new_tokens=5)))  # ...as budgeted: 44 // 4 + 4 prompt + 5 completion
    spent = [(p.t, p.tokens) for p in proxy.posts]
    assert len(spent) == 20 and all(tok == 20 for _, tok in spent) and not proxy.upstream_errors
    for width in (1.0, 2.0):  # at most 200 tokens in any second (10 requests), 300 in any two
        most = _most_in_window(spent, width)
        assert most <= 100 + 100 * width, f"{most} tokens arrived within {width} s under 6000 TPM (100 a second, 100 saved up)"
        print(f"6000 TPM: at most {most} tokens in {width} s (bound {100 + 100 * width:.0f})")


@pytest.mark.timeout(60)
def test_token_budget_is_corrected_by_the_reported_usage(fault_proxy, backend):  # noqa: F811
    """The backend budgets 20 tokens a request, the endpoint reports using 40: the budget follows the report.

    One request at a time, so each correction lands before the next request is paced. In a
    window, only the last request's correction may fall after it: at most
    capacity + rate x width + (40 - 20) reported tokens arrive in any window.
    """
    proxy = fault_proxy(None, script=(), reply_usage=(35, 5))
    b = backend(proxy.base_url, tokens_per_minute=6000, max_concurrency=1)
    _all_answered(b.generate(_chats(10, chars=44), SamplingConfig(max_new_tokens=5)))  # budgeted at 15 + 5
    spent = [(p.t, p.tokens) for p in proxy.posts]
    assert len(spent) == 10 and all(tok == 40 for _, tok in spent)
    for width in (1.0, 2.0):
        most = _most_in_window(spent, width)
        assert most <= 100 + 100 * width + 20, f"{most} reported tokens within {width} s under 6000 TPM: the usage did not correct the budget"
        print(f"6000 TPM, usage 2x the budgeted: at most {most} tokens in {width} s (bound {120 + 100 * width:.0f})")


def test_concurrency_halves_to_a_floor_of_one_slot_and_grows_back():
    lim = AdaptiveLimiter(8, cooldown_s=0.0)  # every 429 cuts
    for _ in range(20):
        lim.on_response(429, {})
    assert (lim.concurrency, lim.window_min, lim.rate_limited) == (1, 1, 20)
    lim.on_success()  # additive increase from the floor: one slot a window of successes
    assert lim.concurrency == 2

    async def one_at_a_time():
        lim = AdaptiveLimiter(4, cooldown_s=0.0)
        for _ in range(10):
            lim.on_response(429, {})
        await asyncio.wait_for(lim.acquire(), 5)  # the floor's slot is there to take
        second = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0.05)
        assert not second.done() and lim.in_flight == 1  # one slot: the next request waits...
        lim.release()
        await asyncio.wait_for(second, 5)  # ...and gets it when the first is done
        lim.release()
        return lim.in_flight

    assert asyncio.run(one_at_a_time()) == 0


@pytest.mark.timeout(60)
def test_repeated_429s_leave_one_slot_and_every_request_is_answered(fault_proxy, backend):  # noqa: F811
    """Twelve 429s over more than two cool-downs would cut 2 -> 1 -> 0 slots without the floor, and the rest would wait forever."""
    proxy = fault_proxy(None, script=["429"] * 12, retry_after="0.25")
    b = backend(proxy.base_url, max_concurrency=2, max_retries=20, backoff_base_s=0.01)
    res = b.generate(_chats(8), SamplingConfig(max_new_tokens=1))
    _all_answered(res)
    snap = b.limiter.snapshot()
    assert snap["concurrency_min"] == 1 and snap["rate_limited_total"] == 12 == proxy.injected["429"]
    assert len(proxy.posts) == 8 + 12 and sum(r.retries for r in res) == 12  # each 429 retried once


def _retry_gap(proxy) -> float:
    (first, second) = proxy.posts
    assert first.fault == "429" and second.fault is None
    return second.t - first.t


@pytest.mark.timeout(30)
def test_retry_after_is_honoured(fault_proxy, backend):  # noqa: F811
    proxy = fault_proxy(None, script=["429"], retry_after="1")
    b = backend(proxy.base_url, backoff_base_s=0.01, backoff_max_s=5.0)  # its own backoff would wait at most 0.01 s
    _all_answered(b.generate(_chats(1), SamplingConfig(max_new_tokens=1)))
    gap = _retry_gap(proxy)
    assert gap >= 1.0, f"the retry came {gap:.3f} s after a 429 that said Retry-After: 1"
    print(f"Retry-After: 1 -> retry {gap:.3f} s later")


@pytest.mark.timeout(20)  # waiting out Retry-After: 30 fails here
def test_retry_after_is_capped_by_backoff_max(fault_proxy, backend):  # noqa: F811
    proxy = fault_proxy(None, script=["429"], retry_after="30")
    b = backend(proxy.base_url, backoff_base_s=0.01, backoff_max_s=0.5)
    _all_answered(b.generate(_chats(1), SamplingConfig(max_new_tokens=1)))
    gap = _retry_gap(proxy)
    assert 0.5 <= gap < 30, f"the retry came {gap:.3f} s after Retry-After: 30 with backoff_max_s 0.5: it should wait exactly the cap"
    print(f"Retry-After: 30, backoff_max_s 0.5 -> retry {gap:.3f} s later")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "script, answered",
    [
        (["500", "truncated", "429"], True),
        (["truncated", "500", "429"], True),
        (["500", "truncated"] * 3, False),
        (["truncated"] + ["500"] * 4, False),  # after a malformed reply the client has 2 retries left, not 3
    ],
)
def test_one_retry_budget_for_status_errors_and_malformed_replies(fault_proxy, backend, script, answered):  # noqa: F811
    """The client's retries (500, 429) and the backend's own (a 200 with broken JSON) share max_retries:
    a request reaches the endpoint at most max_retries + 1 times, and its retries say how often it did."""
    proxy = fault_proxy(None, script=script, retry_after="0.01")
    b = backend(proxy.base_url, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
    (r,) = b.generate(_chats(1), SamplingConfig(max_new_tokens=1))
    assert len(proxy.posts) == 4 == r.retries + 1, ([p.fault for p in proxy.posts], r.retries, r.error)
    assert b.stats.retries == 3
    if answered:
        assert r.error is None and [p.fault for p in proxy.posts] == script + [None]
    else:
        assert r.error is not None and r.error.startswith("failed after 3 retries") and not r.completions


@pytest.mark.timeout(30)
def test_the_proxy_surfaces_upstream_failures_and_closes(fault_proxy, backend):  # noqa: F811
    """The proxy's own check: a dead upstream is a 502 naming the error, recorded; ``stop`` closes the listener and client."""
    import socket

    from conftest import free_port

    proxy = fault_proxy(f"http://127.0.0.1:{free_port()}/v1", script=())  # nothing listens there
    b = backend(proxy.base_url, max_retries=1, backoff_base_s=0.01)
    (r,) = b.generate(_chats(1), SamplingConfig(max_new_tokens=1))  # the proxy answered: an HTTP error, not "unreachable"
    assert re.match(r"failed after 1 retries: HTTP 502.*upstream .*: ConnectError", r.error), r.error
    assert len(proxy.upstream_errors) == 2 and all(e.startswith("ConnectError") for e in proxy.upstream_errors), proxy.upstream_errors
    proxy.stop()
    assert proxy.client.is_closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
