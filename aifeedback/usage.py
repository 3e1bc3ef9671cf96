"""Token and cost accounting: what each batch sent to the model and got back, and what that cost.

Backends count as they go: ``record(prompt_tokens, completion_tokens)`` after each
request (openai: the endpoint's own ``usage``; transformers: the tokenizer's exact
counts). The stage executor opens a :func:`meter` around each batch, so the counts
land on that batch even when batches run on threads (meters are per thread; a
backend records from the thread that called it). ``run_batch`` writes one line per
computed batch to ``RUN/usage.jsonl``; the stage's ``history.jsonl`` line carries
the invocation's totals, and the export card the run's.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USAGE_FILE = "usage.jsonl"
TOKEN_KEYS = ("requests", "prompt_tokens", "completion_tokens")


@dataclass
class Meter:
    """Counts of one batch (or any block of code) on one thread."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    exact: bool = True  # every count came from the endpoint's usage or the model's tokenizer
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. the endpoint's settled concurrency


_local = threading.local()


class meter:
    """``with meter() as m: ...``: every ``record`` made on this thread inside the block adds to ``m``."""

    def __enter__(self) -> Meter:
        self.m = Meter()
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        stack.append(self.m)
        return self.m

    def __exit__(self, *exc) -> None:
        _local.stack.remove(self.m)


def record(prompt_tokens: int, completion_tokens: int, requests: int = 1, exact: bool = True, **notes: Any) -> None:
    """Add one request's (or one batch's) counts to every meter open on this thread."""
    for m in getattr(_local, "stack", ()):
        m.requests += requests
        m.prompt_tokens += int(prompt_tokens)
        m.completion_tokens += int(completion_tokens)
        m.exact = m.exact and exact
        m.notes.update(notes)


def cost(prices: dict | None, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float | None:
    """USD at the price table's rates for ``model`` (None without a table), at its Batch API rates when ``batch``.
    Tables are checked at config time."""
    if not prices or model not in prices:
        return None
    from .backend_config import ModelPrice

    p = prices[model]
    pin, pout = (p if isinstance(p, ModelPrice) else ModelPrice.model_validate(p)).rates(batch)
    return round(prompt_tokens * pin / 1e6 + completion_tokens * pout / 1e6, 10)


def is_batch(backend_cfg: Any | None) -> bool:
    """Whether a backend config sends its requests through a Batch API (priced at batch rates)."""
    return bool(getattr(backend_cfg, "batch", False) or getattr(backend_cfg, "batch_file_only", False))


def batch_record(stage: str, batch_key: str, m: Meter, backend_cfg: Any | None) -> dict:
    """The ``usage.jsonl`` line of one computed batch."""
    model = getattr(backend_cfg, "model", None)
    prices = getattr(backend_cfg, "prices", None)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage": stage,
        "batch_key": batch_key,
        "backend": getattr(backend_cfg, "kind", None),
        "model": model,
        **{k: getattr(m, k) for k in TOKEN_KEYS},
        "exact": m.exact,
        "batch": is_batch(backend_cfg),
        "cost_usd": cost(prices, model, m.prompt_tokens, m.completion_tokens, is_batch(backend_cfg)) if model else None,
        **m.notes,
    }


def append(run_root: str | Path, rec: dict) -> None:
    """One line per computed batch; a single short ``write`` in append mode, so workers' lines do not interleave."""
    with open(Path(run_root) / USAGE_FILE, "a") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")


def read(run_root: str | Path) -> list[dict]:
    path = Path(run_root) / USAGE_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: the batch's shard may still be there; its counts are lost
                continue
    return out


def summarise(stats: list[dict]) -> dict:
    """An invocation's totals from its computed batches' stats (``run_batch`` puts a ``usage`` record in each)."""
    recs = [s["usage"] for s in stats if s.get("usage")]
    out: dict[str, Any] = {k: sum(r[k] for r in recs) for k in TOKEN_KEYS}
    costs = [r["cost_usd"] for r in recs if r.get("cost_usd") is not None]
    out["cost_usd"] = round(sum(costs), 10) if costs and len(costs) == len(recs) else None
    out["tokens_exact"] = all(r.get("exact", True) for r in recs)
    settled = [r["concurrency"] for r in recs if r.get("concurrency") is not None]
    if settled:
        out["concurrency"] = settled[-1]  # where the endpoint's concurrency settled at the end
        out["concurrency_min"] = min(r.get("concurrency_min", r["concurrency"]) for r in recs)
        out["rate_limited_total"] = max(r.get("rate_limited_total", 0) for r in recs)  # 429s the backend has seen (per process)
    return out


def invocation_rows(run_root: str | Path) -> list[dict]:
    """Each stage invocation of ``history.jsonl`` with its tokens and cost (None where it predates accounting)."""
    path = Path(run_root) / "history.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            h = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append({k: h.get(k) for k in ("time", "stage", "n_in", "n_out", "batches_computed", *TOKEN_KEYS, "cost_usd", "concurrency", "concurrency_min", "rate_limited_total")})
    return rows


def totals(run_root: str | Path) -> dict:
    """Per stage, the tokens and cost of every batch the run computed (``usage.jsonl``)."""
    by_stage: dict[str, dict] = {}
    for r in read(run_root):
        t = by_stage.setdefault(r["stage"], {**{k: 0 for k in TOKEN_KEYS}, "cost_usd": 0.0, "priced": True, "exact": True, "batches": 0, "models": [], "batch_api_requests": 0})
        t["batches"] += 1
        if r.get("batch"):  # priced at the Batch API's rates
            t["batch_api_requests"] += int(r.get("requests") or 0)
        for k in TOKEN_KEYS:
            t[k] += int(r.get(k) or 0)
        if r.get("cost_usd") is None:
            t["priced"] = False
        else:
            t["cost_usd"] += r["cost_usd"]
        t["exact"] = t["exact"] and bool(r.get("exact", True))
        if r.get("model") and r["model"] not in t["models"]:
            t["models"].append(r["model"])
    for t in by_stage.values():
        t["cost_usd"] = round(t["cost_usd"], 10) if t.pop("priced") else None
    return by_stage


__all__ = ["Meter", "meter", "record", "cost", "batch_record", "append", "read", "summarise", "totals"]
