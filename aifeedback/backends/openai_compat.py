"""The ``openai`` backend: any OpenAI-compatible endpoint (vLLM serve, llama.cpp server, hosted APIs).

Async over httpx with bounded concurrency; every request has a timeout; 429
(honouring Retry-After), 5xx, connection resets, timeouts and malformed JSON are
retried with exponential backoff and full jitter. The API key is read from the
environment variable named in the config, and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
from typing import Any

import httpx

from ..config import BackendConfig, SamplingConfig
from ..errors import BackendError
from .base import BackendStats, Capabilities, Chat, ChoiceResult, Completion, GenerationResult, ScoringPrompt, normalise, parse_choice

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, text: str, retry_after: float | None = None):
        super().__init__(text)
        self.retry_after = retry_after


def _is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _run(coro):
    """Run a coroutine from sync code, also when this thread already has a loop (Prefect, notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: BackendConfig):
        if not cfg.base_url:
            raise BackendError("the openai backend needs backend.base_url, e.g. --set backend.base_url=http://127.0.0.1:8000/v1")
        self.cfg = cfg
        self.model_id = cfg.model
        self.base_url = cfg.base_url
        key = os.environ.get(cfg.api_key_env)
        if not key and not _is_local(cfg.base_url):
            raise BackendError(
                f"No API key for {cfg.base_url}: set the environment variable {cfg.api_key_env} "
                f"(or name another with backend.api_key_env). Keys are never read from files."
            )
        self._key = key
        self.capabilities = Capabilities(logprobs=cfg.top_logprobs > 0, prefix_reuse=True, in_process=False, token_counts_exact=True, tokenizer=False)
        self.tokenizer = None  # the served model's tokenizer is not here: lengths are approximate
        self.stats = BackendStats()
        self._rng = random.Random(0)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model_id!r})"

    # transport ----------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        limits = httpx.Limits(max_connections=self.cfg.max_concurrency, max_keepalive_connections=self.cfg.max_concurrency)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self.cfg.timeout_s), limits=limits)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cfg.backoff_max_s)
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2**attempt))
        return self._rng.uniform(0, cap)

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict) -> tuple[dict | None, str | None, int]:
        """POST with retries. Returns (json, error_text, retries)."""
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = await client.post(path, json=body)
                if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                    ra = resp.headers.get("retry-after")
                    try:
                        ra_s = float(ra) if ra is not None else None
                    except ValueError:
                        ra_s = None
                    raise _Retryable(f"HTTP {resp.status_code}: {resp.text[:300]}", ra_s)
                if resp.status_code == 401 or resp.status_code == 403:
                    raise BackendError(f"{self.base_url} refused the credentials (HTTP {resp.status_code}); check the key in ${self.cfg.api_key_env}")
                if resp.status_code >= 400:
                    return None, f"HTTP {resp.status_code}: {resp.text[:500]}", attempt
                try:
                    return resp.json(), None, attempt
                except (json.JSONDecodeError, ValueError) as exc:
                    raise _Retryable(f"malformed JSON from server ({exc}): {resp.text[:200]!r}") from None
            except _Retryable as exc:
                last = str(exc)
                retry_after = exc.retry_after
            except httpx.TimeoutException as exc:
                last, retry_after = f"timeout after {self.cfg.timeout_s}s ({type(exc).__name__})", None
            except httpx.TransportError as exc:
                last, retry_after = f"{type(exc).__name__}: {exc or 'connection failed'} at {self.base_url}", None
            if attempt < self.cfg.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        return None, f"failed after {self.cfg.max_retries} retries: {last}", self.cfg.max_retries

    async def _gather(self, bodies: list[tuple[str, dict]]) -> list[tuple[dict | None, str | None, int]]:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        async with self._client() as client:

            async def one(path: str, body: dict):
                async with sem:
                    return await self._post(client, path, body)

            return await asyncio.gather(*(one(p, b) for p, b in bodies))

    def _check_reachable(self, results: list[tuple[dict | None, str | None, int]]) -> None:
        errors = [e for _, e, _ in results if e]
        if results and len(errors) == len(results) and all(("ConnectError" in e or "timeout" in e) for e in errors):
            raise BackendError(f"the endpoint {self.base_url} is unreachable; every request failed. Last error: {errors[-1]}. Check that the server is running.")

    # protocol -----------------------------------------------------------------
    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        self.stats.generate_calls += 1
        bodies = []
        for i, chat in enumerate(chats):
            for j in range(params.n):
                body = {
                    "model": self.model_id,
                    "messages": chat,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "max_tokens": params.max_new_tokens,
                }
                if seeds is not None:
                    body["seed"] = int(seeds[i][j])
                bodies.append(("/chat/completions", body))
        raw = _run(self._gather(bodies))
        self._check_reachable(raw)
        out: list[GenerationResult] = []
        for i in range(len(chats)):
            res = GenerationResult()
            for j in range(params.n):
                data, err, retries = raw[i * params.n + j]
                res.retries += retries
                if err is None:
                    try:
                        choice = data["choices"][0]
                        usage = data.get("usage") or {}
                        res.completions.append(
                            Completion(
                                text=choice["message"].get("content") or "",
                                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                completion_tokens=int(usage.get("completion_tokens", 0)),
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
            bodies.append(("/chat/completions", body))
        raw = _run(self._gather(bodies))
        self._check_reachable(raw)
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
            usage = data.get("usage") or {}
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
                return ChoiceResult(normalise(logprobs, floor=floor), logprobs, "logprobs", raw=text, prompt_tokens=int(usage.get("prompt_tokens", 0)), retries=retries)
        idx = parse_choice(text, candidates)
        if idx is None:
            return ChoiceResult(None, [None] * len(candidates), "unparseable", raw=text, error="no log-probs and no candidate in the reply text", retries=retries)
        probs = [1.0 if k == idx else 0.0 for k in range(len(candidates))]
        return ChoiceResult(probs, [None] * len(candidates), "parsed", raw=text, prompt_tokens=int(usage.get("prompt_tokens", 0)), retries=retries)

    def close(self) -> None:
        pass
