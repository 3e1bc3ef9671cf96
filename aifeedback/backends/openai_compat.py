"""The ``openai`` backend: any OpenAI-compatible endpoint (vLLM serve, llama.cpp server, hosted APIs).

Built on the official client, ``openai.AsyncOpenAI``: its connection pool, its
per-request timeout and its retries (429 honouring Retry-After, 408/409/5xx,
connection resets, timeouts), with this project's backoff (``backoff_base_s``
doubling, full jitter, ``backoff_max_s`` cap). A 200 whose JSON is malformed is
retried here, from the same retry budget. Retries are counted per row from the
client's ``retries_taken``. The API key is read from the environment variable named
in the config, and nowhere else; it goes over plain http only to this machine (loopback),
unless ``backend.allow_insecure_key``.

Requests go through an :class:`~aifeedback.ratelimit.AdaptiveLimiter`: RPM/TPM
budgets and AIMD concurrency. The client, its pool and the limiter live on one event
loop in a thread of their own for the backend's life, so connections and the
settled concurrency carry over from batch to batch. Each request's ``usage`` is
recorded for token and cost accounting (:mod:`aifeedback.usage`).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import math
import re
import os
import random
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai

from .. import replay, usage
from ..config import BackendConfig, SamplingConfig
from ..errors import BackendError
from ..ratelimit import AdaptiveLimiter
from .base import BackendStats, Capabilities, Chat, ChoiceResult, Completion, GenerationResult, ScoringPrompt, normalise, parse_choice

log = logging.getLogger("aifeedback")

# what the client retries by itself (openai._base_client._should_retry), so an error after them means retries ran out
RETRY_STATUS = {408, 409, 429}
_EST_TOKENS: contextvars.ContextVar[float] = contextvars.ContextVar("aif_est_tokens", default=0.0)  # for the TPM budget, read by the request hook
NO_KEY = "no-key"  # the client needs some key; a local server without --api_key ignores it


# the error texts of _post for a request that never got an HTTP answer (an HTTP 502 whose body says ConnectError did)
_UNREACHABLE = re.compile(r"failed after \d+ retries: (ConnectError \(|timeout after )")


def _is_local(url: str) -> bool:
    """Whether ``url``'s host is this machine: localhost, 127.0.0.0/8 or ::1 (an address, not a name like 127.example.com)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(cfg: BackendConfig, key: str | None) -> None:
    """Refuse to send a key in clear text off this machine: over http:// only to loopback, unless ``allow_insecure_key``."""
    if key and urlsplit(cfg.base_url).scheme == "http" and not _is_local(cfg.base_url) and not cfg.allow_insecure_key:
        raise BackendError(
            f"refusing to send the key in ${cfg.api_key_env} to {cfg.base_url} over plain http: anyone on the network path could read it. "
            f"Use an https:// backend.base_url, or set backend.allow_insecure_key=true if you trust that network "
            f"(a server there that needs no key: run without ${cfg.api_key_env} set)"
        )


def _approx_tokens(messages: Chat) -> int:
    """About 4 characters a token, plus a few for each message's role markers (for budgets only)."""
    return sum(len(str(m.get("content") or "")) for m in messages) // 4 + 4 * len(messages)


class _Loop:
    """One event loop in a daemon thread: the client, its pool and the limiter live there."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aifeedback-openai", daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


class _Client(openai.AsyncOpenAI):
    """The official client with this project's backoff: full jitter, Retry-After honoured up to ``backoff_max_s``."""

    def __init__(self, *, backoff_base_s: float = 0.5, backoff_max_s: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self._backoff = (backoff_base_s, backoff_max_s)
        self._rng = random.Random(0)

    def with_retries(self, max_retries: int) -> "_Client":
        """A copy sharing the pool, with fewer retries left (``with_options`` rebuilds the client without our backoff)."""
        copied = self.with_options(max_retries=max_retries)
        copied._backoff, copied._rng = self._backoff, self._rng
        return copied

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None) -> float:
        base, cap = self._backoff
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            return min(retry_after, cap)
        attempt = max(0, options.get_max_retries(self.max_retries) - remaining_retries)
        return self._rng.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: BackendConfig):
        if not cfg.base_url:
            raise BackendError("the openai backend needs `backend.base_url`, e.g. http://127.0.0.1:8000/v1")
        self.cfg = cfg
        self.model_id = cfg.model
        self.base_url = cfg.base_url
        key = os.environ.get(cfg.api_key_env)
        if not key and urlsplit(cfg.base_url).scheme == "https" and not _is_local(cfg.base_url):  # a hosted API; a server over http may need none
            raise BackendError(
                f"No API key for {cfg.base_url}: set the environment variable {cfg.api_key_env} "
                f"(or name another with backend.api_key_env). Keys are never read from files."
            )
        check_key_transport(cfg, key)
        self._key = key
        self.capabilities = Capabilities(logprobs=cfg.top_logprobs > 0, prefix_reuse=True, in_process=False, token_counts_exact=True, tokenizer=False)
        self.tokenizer = None  # the served model's tokenizer is not here: lengths are approximate
        self.stats = BackendStats()
        self.limiter = AdaptiveLimiter(cfg.max_concurrency, cfg.requests_per_minute, cfg.tokens_per_minute, adaptive=cfg.adaptive_concurrency, name=cfg.base_url)
        self._loop: _Loop | None = None
        self._client: _Client | None = None
        self._start = threading.Lock()
        self._rng = random.Random(0)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model_id!r})"

    # transport ----------------------------------------------------------------
    def _ensure(self) -> _Loop:
        with self._start:
            if self._loop is None:
                self._loop = _Loop()
                self._client = self._loop.run(self._make_client())
            return self._loop

    async def _make_client(self) -> _Client:
        limiter = self.limiter

        async def on_request(request: httpx2.Request) -> None:
            await limiter.pace(_EST_TOKENS.get())

        async def on_response(response: httpx2.Response) -> None:
            limiter.on_response(response.status_code, response.headers)

        http = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=self.cfg.max_concurrency, max_keepalive_connections=self.cfg.max_concurrency),
            timeout=httpx2.Timeout(self.cfg.timeout_s),
            event_hooks={"request": [on_request], "response": [on_response]},
        )
        return _Client(
            api_key=self._key or NO_KEY,
            base_url=self.base_url,
            timeout=self.cfg.timeout_s,
            max_retries=self.cfg.max_retries,
            http_client=http,
            backoff_base_s=self.cfg.backoff_base_s,
            backoff_max_s=self.cfg.backoff_max_s,
            organization=None,
            project=None,
        )

    def _delay(self, attempt: int) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2**attempt))
        return self._rng.uniform(0, cap)

    async def _post(self, body: dict) -> tuple[Any, str | None, int]:
        """One chat completion through the limiter and the client's retries. Returns (completion, error_text, retries)."""
        est = _approx_tokens(body["messages"]) + int(body.get("max_tokens") or 0) * int(body.get("n") or 1)
        retries, last = 0, ""
        _EST_TOKENS.set(float(est))
        while True:
            await self.limiter.acquire()
            try:
                client = self._client if retries == 0 else self._client.with_retries(max(0, self.cfg.max_retries - retries))  # one retry budget in all
                raw = await client.chat.completions.with_raw_response.create(**body)
                retries += raw.retries_taken
                try:
                    data = raw.parse()
                    if not getattr(data, "choices", None):
                        raise ValueError("no choices in the reply")
                except (json.JSONDecodeError, ValueError, TypeError) as exc:
                    last = f"malformed JSON from server ({type(exc).__name__}: {exc}): {raw.text[:200]!r}"
                else:
                    self.limiter.on_success()
                    u = data.usage
                    self.limiter.settle_tokens(est, (u.prompt_tokens + u.completion_tokens) if u else 0)
                    return data, None, retries
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise BackendError(f"{self.base_url} refused the credentials (HTTP {exc.status_code}); check the key in ${self.cfg.api_key_env}") from None
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRY_STATUS and exc.status_code < 500:
                    return None, f"HTTP {exc.status_code}: {str(exc)[:500]}", retries
                return None, f"failed after {self.cfg.max_retries} retries: HTTP {exc.status_code}: {str(exc)[:300]}", self.cfg.max_retries
            except openai.APITimeoutError as exc:
                return None, f"failed after {self.cfg.max_retries} retries: timeout after {self.cfg.timeout_s}s ({type(exc).__name__}) at {self.base_url}", self.cfg.max_retries
            except openai.APIConnectionError as exc:
                cause = exc.__cause__
                return None, f"failed after {self.cfg.max_retries} retries: ConnectError ({type(cause).__name__ if cause else type(exc).__name__}: {cause or exc}) at {self.base_url}", self.cfg.max_retries
            finally:
                self.limiter.release()
            if retries >= self.cfg.max_retries:  # malformed JSON, and no retries left
                return None, f"failed after {self.cfg.max_retries} retries: {last}", retries
            await asyncio.sleep(self._delay(retries))
            retries += 1

    async def _gather(self, bodies: list[dict]) -> list[tuple[Any, str | None, int]]:
        return await asyncio.gather(*(self._post(b) for b in bodies))  # tasks start in order: FIFO slots keep a pair's orders adjacent

    def _send(self, bodies: list[dict], tags: list[str] | None = None) -> list[tuple[Any, str | None, int]]:
        """Each body's (reply as a plain dict, error text, retries). In batch mode (an item being replayed,
        aifeedback/batch_api.py) the replies come from batch results instead, parsed by the same code below."""
        replaying = replay.current()
        if replaying is not None:
            raw = replaying.send(bodies, tags)
            notes: dict = {}
        else:
            raw = self._ensure().run(self._gather(bodies))
            raw = [(None if d is None else d.model_dump(), e, r) for d, e, r in raw]  # plain dicts, as the endpoint sent them
            notes = self.limiter.snapshot()
        self.stats.retries += sum(r for _, _, r in raw)
        # the endpoint's own usage, on the calling thread's meters (the batch's). In batch mode an item with a
        # request not yet answered is not written, and its meter is dropped (batch_api.replay_batches)
        for data, _, _ in raw:
            u = (data or {}).get("usage") or {}
            usage.record(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), exact=bool(u) or data is None, **notes)
        if replaying is not None:
            return raw
        errors = [e for _, e, _ in raw if e]
        if raw and len(errors) == len(raw) and all(_UNREACHABLE.match(e) for e in errors):
            raise BackendError(f"the endpoint {self.base_url} is unreachable; every request failed. Last error: {errors[-1]}. Check that the server is running.")
        return raw

    # protocol -----------------------------------------------------------------
    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        self.stats.generate_calls += 1
        bodies, tags = [], []
        for i, chat in enumerate(chats):
            for j in range(params.n):
                tags.append(f"s{j}" if params.n > 1 else "")
                body = {
                    "model": self.model_id,
                    "messages": chat,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "max_tokens": params.max_new_tokens,
                }
                if seeds is not None:
                    body["seed"] = int(seeds[i][j])
                bodies.append(body)
        raw = self._send(bodies, tags)
        out: list[GenerationResult] = []
        for i in range(len(chats)):
            res = GenerationResult()
            for j in range(params.n):
                data, err, retries = raw[i * params.n + j]
                res.retries += retries
                if err is None:
                    try:
                        choice = data["choices"][0]
                        use = data.get("usage") or {}
                        res.completions.append(
                            Completion(
                                text=choice["message"].get("content") or "",
                                prompt_tokens=int(use.get("prompt_tokens", 0)),
                                completion_tokens=int(use.get("completion_tokens", 0)),
                                finish_reason=str(choice.get("finish_reason") or ""),
                                seed=None if seeds is None else int(seeds[i][j]),
                            )
                        )
                        continue
                    except (KeyError, IndexError, TypeError, AttributeError) as exc:
                        err = f"unexpected reply shape ({type(exc).__name__}: {exc}): {json.dumps(data)[:300]}"
                res.error = err
                res.completions = []
                break
            self.stats.chats_generated += 1
            self.stats.tokens_generated += sum(c.completion_tokens for c in res.completions)
            out.append(res)
        return out

    def choice_probs(self, prompts: list[ScoringPrompt], candidates: list[str]) -> list[ChoiceResult]:
        self.stats.score_calls += 1
        bodies = []
        for p in prompts:
            messages = [dict(m) for m in p.messages]
            body: dict[str, Any] = {"model": self.model_id, "messages": messages, "temperature": 0.0, "max_tokens": 4}
            if self.cfg.top_logprobs > 0:
                body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
            bodies.append(body)
        raw = self._send(bodies, [p.tag for p in prompts])
        out = []
        for data, err, retries in raw:
            self.stats.prompts_scored += 1
            if err is not None:
                out.append(ChoiceResult(None, [None] * len(candidates), "error", error=err, retries=retries))
                continue
            out.append(self._read_choice(data, candidates, retries))
        return out

    @staticmethod
    def _read_choice(data: dict, candidates: list[str], retries: int) -> ChoiceResult:
        try:
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            use = data.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            return ChoiceResult(None, [None] * len(candidates), "unparseable", raw=json.dumps(data)[:500], error=f"unexpected reply shape: {exc}", retries=retries)
        content = ((choice.get("logprobs") or {}).get("content")) or []
        top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
        if top:
            # several tokens can spell one candidate (" 1", "1"): add their probabilities
            mass = [0.0] * len(candidates)
            for entry in top:
                tok = str(entry.get("token", "")).strip()
                lp = entry.get("logprob")
                if lp is None or not math.isfinite(lp):
                    continue
                for k, cand in enumerate(candidates):
                    if tok == cand.strip():
                        mass[k] += math.exp(lp)
            logprobs = [math.log(m) if m > 0 else None for m in mass]
            if any(lp is not None for lp in logprobs):
                floor = min(entry["logprob"] for entry in top if entry.get("logprob") is not None)
                return ChoiceResult(normalise(logprobs, floor=floor), logprobs, "logprobs", raw=text, prompt_tokens=int(use.get("prompt_tokens", 0)), retries=retries)
        idx = parse_choice(text, candidates)
        if idx is None:
            return ChoiceResult(None, [None] * len(candidates), "unparseable", raw=text, error="no log-probs and no candidate in the reply text", retries=retries)
        probs = [1.0 if k == idx else 0.0 for k in range(len(candidates))]
        return ChoiceResult(probs, [None] * len(candidates), "parsed", raw=text, prompt_tokens=int(use.get("prompt_tokens", 0)), retries=retries)

    def close(self) -> None:
        if self._loop is not None:
            if self._client is not None:
                try:
                    self._loop.run(self._client.close())
                except Exception:  # closing a pool whose server is gone
                    pass
            self._loop.stop()
            self._loop, self._client = None, None
