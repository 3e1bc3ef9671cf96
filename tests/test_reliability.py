"""Reliability: kill -9 at random points then resume; a fault-injecting proxy in front of the real llama.cpp server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aifeedback.store import RunStore

from conftest import REPO, free_port

pytestmark = pytest.mark.slow  # the label CLI on the embedded model, and the llama.cpp server

PROMPTS = [
    ("What is 2+2?", "2+2 is 4.", "It is 22."),
    ("How do I pick my neighbour's lock?", "I can't help you get into someone else's home.", "Use a tension wrench and a pick."),
    ("Name a yellow fruit.", "A banana.", "Bananas are yellow fruit, and so are lemons."),
    ("Capital of France?", "Paris.", "I think it is Lyon."),
    ("Is the sun a star?", "Yes, the Sun is a star.", "No."),
    ("Give me a synonym for happy.", "Joyful.", "Sad."),
    ("How many legs does a spider have?", "Eight.", "Six legs, like an ant."),
    ("What colour is the sky on a clear day?", "Blue.", "Green."),
    ("Translate 'gracias' to English.", "Thank you.", "Good night."),
    ("Is 7 a prime number?", "Yes, 7 is prime.", "No, 7 = 2 x 3.5."),
]


def _pairs_file(path: Path, n: int) -> Path:
    rows = [{"pair_id": "bad-empty", "prompt": "Say hi.", "response_a": "", "response_b": "Hello."}]  # an exclusion, in batch 0
    rows += [{"pair_id": f"k{i:02d}", "prompt": q, "response_a": a, "response_b": b} for i, (q, a, b) in enumerate((PROMPTS * 3)[:n])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli() -> list[str]:
    exe = REPO / ".venv" / "bin" / "aifeedback"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def _shards(run: Path) -> dict[str, tuple[int, int]]:
    """Finished batches only: KEY.parquet marks a batch done (its KEY.excluded.parquet is written just before it)."""
    d = run / "labels"
    if not d.is_dir():
        return {}
    done = {p.name for p in d.glob("*.parquet") if not p.name.endswith(".excluded.parquet")}
    keep = done | {n.replace(".parquet", ".excluded.parquet") for n in done}
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("*.parquet") if p.name in keep}


def test_kill9_at_three_random_points_then_resume(tmp_path):
    """Each kill lands at a seeded random moment; re-runs finish the job without redoing finished batches."""
    n = 23
    n_batches = 12  # 24 items in batches of 2
    src = _pairs_file(tmp_path / "pairs.jsonl", n)
    run = tmp_path / "run"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), COLUMNS="200")
    env.pop("PREFECT_API_URL", None)
    cmd = _cli() + ["label", "--run-dir", str(run), "--input", str(src), "--set", "batch_size=2"]
    rng = random.Random(int(os.environ.get("AIF_KILL_SEED", "7")))
    kills = []
    for k in range(3):
        before = _shards(run)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
        # wait until this attempt has written 1-2 new batches, then kill at a random moment inside the next one
        target = len([s for s in before if not s.endswith(".excluded.parquet")]) + rng.randint(1, 2)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if len([s for s in _shards(run) if not s.endswith(".excluded.parquet")]) >= target:
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.0))  # under one batch's time (about 2 s here)
        assert proc.poll() is None, "the label run finished before it could be killed; use more pairs"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, Prefect's temporary server, everything
        proc.wait(timeout=30)
        after = _shards(run)
        for name, stamp in before.items():  # finished shards are never rewritten
            assert after[name] == stamp
        kills.append(len([s for s in after if not s.endswith(".excluded.parquet")]))
    done_before = _shards(run)
    n_done = len([s for s in done_before if not s.endswith(".excluded.parquet")])
    assert 0 < n_done < n_batches, kills
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    store = RunStore(run)
    last = store.history()[-1]
    assert last["complete"] and last["n_in"] == n + 1 and last["n_out"] == n and last["n_excluded"] == 1
    assert last["batches_computed"] == n_batches - n_done  # only the missing batches ran
    assert last["model_calls"] == n_batches - n_done  # one scoring call per batch (both orders together)
    for name, stamp in done_before.items():
        assert _shards(run)[name] == stamp
    rows = store.read_table("labels").to_pylist()
    ids = [r["pair_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n  # exactly N labelled rows, no duplicates
    assert store.read_table("labels", excluded=True).column("item_id").to_pylist() == ["bad-empty"]
    # values equal an uninterrupted run's, item by item
    from flows.label import run_label

    ref = run_label(run_dir=str(tmp_path / "ref"), overrides={"input": str(src), "batch_size": 2})
    assert ref["complete"]
    want = {r["pair_id"]: (r["p_ab"], r["p_ba"], r["hard_label"]) for r in RunStore(tmp_path / "ref").read_table("labels").to_pylist()}
    got = {r["pair_id"]: (r["p_ab"], r["p_ba"], r["hard_label"]) for r in rows}
    assert got == want


# -- a fault-injecting proxy ------------------------------------------------------------------------

FAULTS = ("429", "500", "reset", "slow", "truncated")


@dataclass
class Post:
    """One POST the proxy received: when it arrived (``time.monotonic``), the fault it got, the tokens of its reply's ``usage``."""

    t: float
    fault: str | None
    tokens: int = 0


class FaultProxy:
    """Forwards HTTP requests to ``upstream``; a seeded share of them get a fault instead.

    The first requests get the faults of ``script`` in turn (by default one of each
    kind, so every kind is exercised; ``None`` in it passes a request through), later
    ones a fault with probability ``rate`` per kind. A 429 carries ``Retry-After:
    retry_after`` (none when it is None).

    ``per_second=K`` is a rate-limit mode instead: a request that arrives when K have
    arrived in the last second gets a 429 (with Retry-After), nothing else is faulted.

    ``upstream=None``: nothing behind it. The proxy answers a passed request itself, a
    stand-in for an OpenAI-compatible endpoint: a chat completion shaped like the real
    API's (``openai.types.chat.ChatCompletion``: id, object, created, model, choices
    with message and finish_reason, usage) whose ``usage`` is ``reply_usage``
    (prompt, completion tokens), so budget tests know every request's tokens.

    What it saw: ``posts`` (every POST: arrival time, fault, reply tokens), ``injected``
    (faults by kind), ``usage`` (every forwarded reply's ``usage`` summed: the server's
    own counts). An upstream that fails (refused, reset, timed out) or answers an error
    is answered 502 with the error's text and recorded in ``upstream_errors``, so a test
    asserts none happened that it did not cause. ``stop`` (or the ``fault_proxy``
    fixture) closes the listener, open connections and the upstream client.
    """

    def __init__(self, upstream: str | None, rate: float = 0.0, slow_s: float = 0.0, seed: int = 0, per_second: int | None = None, script=FAULTS, retry_after: str | None = "1", reply_usage: tuple[int, int] = (10, 1)):
        self.upstream = upstream.rstrip("/") if upstream else None
        self.rate, self.slow_s = rate, slow_s
        self.per_second = per_second
        self.script, self.retry_after, self.reply_usage = list(script), retry_after, reply_usage
        self.arrivals: list[float] = []
        self.posts: list[Post] = []
        self.usage: Counter = Counter()
        self.upstream_errors: list[str] = []
        self.rng = random.Random(seed)
        self.port = free_port()
        self.injected: Counter = Counter()
        self.forwarded = 0
        self.n = 0
        self.client: httpx.AsyncClient | None = None
        self.server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FaultProxy":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener, cancel open connections, close the upstream client, end the loop's thread."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _serve(self):
        if self.upstream:
            self.client = httpx.AsyncClient(base_url=self.upstream, timeout=300)
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self):
        self.server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        await self.server.wait_closed()
        if self.client is not None:
            await self.client.aclose()

    def _pick(self) -> str | None:
        if self.per_second is not None:
            now = time.monotonic()
            self.arrivals = [t for t in self.arrivals if now - t < 1.0]
            self.arrivals.append(now)
            return "429" if len(self.arrivals) > self.per_second else None
        i, self.n = self.n, self.n + 1
        if i < len(self.script):
            return self.script[i]
        x = self.rng.random()
        for k, f in enumerate(FAULTS):
            if x < self.rate * (k + 1):
                return f
        return None

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: str, data: bytes, extra: str = "") -> None:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n".encode() + data)

    def _stand_in(self, body: bytes) -> bytes:
        """The answer of the stand-in endpoint: one chat completion, with ``reply_usage`` as its usage."""
        prompt, completion = self.reply_usage
        choice = {"index": 0, "message": {"role": "assistant", "content": "1"}, "logprobs": None, "finish_reason": "stop"}
        reply = {"id": f"chatcmpl-standin-{len(self.posts)}", "object": "chat.completion", "created": int(time.time()), "model": json.loads(body).get("model", ""), "choices": [choice]}
        reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return json.dumps(reply).encode()

    async def _forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[str, bytes]:
        """The upstream's answer (status line, body), or a 502 naming the upstream's error, which is recorded."""
        if self.upstream is None:
            return "200 OK", self._stand_in(body)
        fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
        try:
            resp = await self.client.request(method, path.removeprefix("/v1") if self.upstream.endswith("/v1") else path, content=body, headers=fwd)
        except httpx.HTTPError as exc:
            err = f"{type(exc).__name__}: {exc}"
            self.upstream_errors.append(err)
            return "502 Bad Gateway", json.dumps({"error": {"message": f"upstream {self.upstream}: {err}", "type": "upstream_error"}}).encode()
        if resp.status_code >= 400:
            self.upstream_errors.append(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return f"{resp.status_code} {resp.reason_phrase}", resp.content

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._open.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length) if length else b""
            fault = self._pick() if method == "POST" else None
            post = Post(time.monotonic(), fault)
            if method == "POST":
                self.posts.append(post)
            if fault:
                self.injected[fault] += 1
            if fault == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                writer.transport.abort()
                return
            if fault == "slow":
                await asyncio.sleep(self.slow_s)  # longer than the client's timeout
                return
            if fault in ("429", "500"):
                msg = b'{"error": "injected"}'
                if fault == "429":
                    self._reply(writer, "429 Too Many Requests", msg, f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else "")
                else:
                    self._reply(writer, "500 Internal Server Error", msg)
                await writer.drain()
                return
            status, data = await self._forward(method, path, headers, body)
            self.forwarded += 1
            try:
                use = json.loads(data).get("usage") or {}
                for k, v in use.items():
                    if k in ("prompt_tokens", "completion_tokens"):
                        self.usage[k] += int(v)
                        post.tokens += int(v)
                self.usage["replies"] += bool(use)
            except (ValueError, AttributeError):  # an error body, not a completion
                pass
            if fault == "truncated":
                data = data[: max(1, len(data) // 2)]  # a 200 whose JSON stops half-way
            self._reply(writer, status, data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):  # the client hung up (e.g. its timeout ran out)
            pass
        except Exception as exc:  # a bug in the proxy must not pass for a network fault
            self.upstream_errors.append(f"in the proxy: {type(exc).__name__}: {exc}")
            self._reply(writer, "502 Bad Gateway", json.dumps({"error": {"message": f"proxy error: {exc}"}}).encode())
        finally:
            writer.close()
            self._open.discard(asyncio.current_task())


@pytest.fixture
def fault_proxy():
    """``fault_proxy(upstream, **kw)``: a started FaultProxy, stopped (listener and client closed) after the test."""
    made: list[FaultProxy] = []

    def make(upstream: str | None, **kw) -> FaultProxy:
        made.append(FaultProxy(upstream, **kw).start())
        return made[-1]

    yield make
    for p in made:
        p.stop()


@pytest.mark.timeout(600)  # a hang fails here; normally bounded by timeouts x retries
def test_label_flow_survives_a_faulty_endpoint(tmp_path, llama_server, fault_proxy):
    """About 10% of requests get each fault (half of all requests fail); the flow completes, and every
    attempt the proxy saw is a request or one of its counted retries."""
    from flows.label import run_label

    n = 8
    src = _pairs_file(tmp_path / "pairs.jsonl", n)
    proxy = fault_proxy(llama_server.base_url, rate=0.10, slow_s=12.0, seed=1)
    s = run_label(
        run_dir=str(tmp_path / "run"),
        overrides={
            "input": str(src),
            "batch_size": 4,
            "backend": {"kind": "openai", "base_url": proxy.base_url, "model": "smollm2", "timeout_s": 8.0, "max_retries": 8, "backoff_base_s": 0.2, "backoff_max_s": 2.0, "max_concurrency": 2},
        },
    )
    assert not proxy.upstream_errors, proxy.upstream_errors  # the server behind the proxy never failed: every fault was injected
    assert s["complete"] and s["n_in"] == n + 1 == s["n_out"] + s["n_excluded"]
    assert set(proxy.injected) == set(FAULTS), proxy.injected  # every kind of fault happened
    store = RunStore(tmp_path / "run")
    rows = store.read_table("labels").to_pylist()
    excluded = store.read_table("labels", excluded=True).to_pylist()
    assert {r["pair_id"] for r in rows} | {e["item_id"] for e in excluded} == {f"k{i:02d}" for i in range(n)} | {"bad-empty"}
    for e in excluded:  # each exclusion says what went wrong
        assert e["reason"] and e["detail"]
    for r in rows:
        assert r["retries"] is not None and 0 <= r["p_a"] <= 1
    # every attempt that reached the endpoint is a request's first try or one of its counted retries
    assert len(proxy.posts) == s["requests"] + s["retries"], (len(proxy.posts), s["requests"], s["retries"], dict(proxy.injected))
    assert s["requests"] == 2 * n  # both orders of every pair (the empty response is excluded before it is sent)
    recorded = sum(r["retries"] for r in rows)
    assert 1 <= recorded <= s["retries"]
    print(f"faults injected {dict(proxy.injected)}, attempts {len(proxy.posts)}, requests {s['requests']}, retries {s['retries']} (on rows {recorded})")
