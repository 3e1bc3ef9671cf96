"""Rate limits for an endpoint: RPM and TPM budgets, and concurrency that adapts (AIMD).

One :class:`AdaptiveLimiter` per backend, used on the backend's own event loop:

* **Budgets.** ``requests_per_minute`` and ``tokens_per_minute`` are token buckets
  refilled continuously, holding at most one second's worth (so a budget is never
  spent in a burst at the start of a minute). Every HTTP attempt, retries included,
  takes one request; a request takes its estimated tokens before it is sent, and the
  estimate is corrected by the endpoint's ``usage`` when the answer comes back.
* **Concurrency.** At most ``window`` requests are in flight, starting at
  ``max_concurrency``. A 429, or rate-limit headers that say the budget is spent
  (``x-ratelimit-remaining-requests/-tokens: 0``), halves the window (multiplicative
  decrease, at most once per cool-down, so one burst of 429s counts once); each
  success adds ``1/window`` (additive increase: one more slot per window of
  successes), up to ``max_concurrency``. A run that meets no limit stays at
  ``max_concurrency``, as fast as the endpoint allows.

Slots are handed out first come, first served, so a pair's two orders, submitted next
to each other, are sent next to each other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

log = logging.getLogger("aifeedback")


class TokenBucket:
    """``rate`` units a second, at most ``capacity`` saved up. ``take`` may drive it negative (a debt paid by waiting)."""

    def __init__(self, per_minute: float, capacity: float | None = None):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, capacity if capacity is not None else self.rate)
        self.level = self.capacity
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (a request larger than the bucket waits for a full bucket)."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class AdaptiveLimiter:
    def __init__(self, max_concurrency: int, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, adaptive: bool = True, cooldown_s: float = 1.0, name: str = "endpoint"):
        self.max = int(max_concurrency)
        self.window = float(max_concurrency)
        self.adaptive = adaptive
        self.cooldown_s = cooldown_s
        self.name = name
        self.rpm = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tpm = TokenBucket(tokens_per_minute) if tokens_per_minute else None
        self.in_flight = 0
        self.rate_limited = 0  # 429 answers seen
        self.window_min = self.max
        self._last_cut = -1e9
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._budget_lock: asyncio.Lock | None = None

    @property
    def concurrency(self) -> int:
        return max(1, int(self.window))

    # concurrency slots (one per logical request, held across the client's retries) -----------------
    async def acquire(self) -> None:
        if self.in_flight < self.concurrency and not self._waiters:
            self.in_flight += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands the slot over: in_flight already counts it
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.concurrency:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    # budgets (one request per HTTP attempt) ----------------------------------------------------------
    async def pace(self, est_tokens: float) -> None:
        """Wait until the budgets allow one more request of about ``est_tokens``, then take them."""
        if self.rpm is None and self.tpm is None:
            return
        if self._budget_lock is None:
            self._budget_lock = asyncio.Lock()
        async with self._budget_lock:  # first come, first served
            while True:
                wait = max(self.rpm.wait_time(1) if self.rpm else 0.0, self.tpm.wait_time(est_tokens) if self.tpm else 0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.rpm:
                self.rpm.take(1)
            if self.tpm:
                self.tpm.take(est_tokens)

    def settle_tokens(self, estimated: float, actual: float) -> None:
        """Correct the token bucket by what the endpoint reported using."""
        if self.tpm is not None and actual:
            if actual > estimated:
                self.tpm.take(actual - estimated)
            else:
                self.tpm.give(estimated - actual)

    # adaptation ---------------------------------------------------------------------------------------
    def on_response(self, status: int, headers) -> None:
        """Every HTTP answer, retries included (an httpx response hook)."""
        if status == 429:
            self.rate_limited += 1
            self._cut("HTTP 429")
            return
        for h in ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"):
            v = headers.get(h)
            if v is not None:
                try:
                    if float(v) <= 0:
                        self._cut(f"{h}: {v}")
                        return
                except ValueError:
                    pass

    def on_success(self) -> None:
        if self.adaptive and self.window < self.max:
            before = self.concurrency
            self.window = min(float(self.max), self.window + 1.0 / self.window)
            if self.concurrency != before:
                log.debug("%s: concurrency %d -> %d", self.name, before, self.concurrency)
                self._wake()

    def _cut(self, why: str) -> None:
        now = time.monotonic()
        if not self.adaptive or now - self._last_cut < self.cooldown_s:
            return
        self._last_cut = now
        before = self.concurrency
        self.window = max(1.0, self.window / 2)
        self.window_min = min(self.window_min, self.concurrency)
        if self.concurrency != before:
            log.info("%s: rate limited (%s): concurrency %d -> %d", self.name, why, before, self.concurrency)

    def snapshot(self) -> dict:
        return {"concurrency": self.concurrency, "concurrency_min": self.window_min, "rate_limited_total": self.rate_limited}
