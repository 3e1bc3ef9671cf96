"""Batch planning for stages, with no Prefect in it (tasks wrap :func:`run_batch`).

A stage is a list of input items cut into batches. Each batch gets a
content-addressed key; a batch whose shard exists is skipped. A :class:`StageJob`
holds only configs (it is cheap to pickle for Ray) and gets its backend from the
per-process cache, so the model loads once per worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa

from .backends import Backend, make_backend
from .config import BackendConfig
from .store import RunStore, batch_key

_BACKENDS: dict[str, Backend] = {}
_CREATE = threading.Lock()


def cached_backend(cfg: BackendConfig) -> Backend:
    """One backend per config per process (thread-safe: a thread runner loads the model once).

    In-process engines serialise their own calls (transformers, vllm), so threads may share one.
    """
    key = cfg.model_dump_json()
    with _CREATE:
        if key not in _BACKENDS:
            _BACKENDS[key] = make_backend(cfg)
        return _BACKENDS[key]


class StageJob(Protocol):
    stage: str
    schema: pa.Schema

    def item_id(self, item: Any) -> str: ...
    def key_config(self) -> dict: ...  # what changes outputs, besides item ids
    def model_id(self) -> str: ...
    def template_version(self) -> str: ...
    def compute(self, items: list[Any], key: str) -> tuple[list[dict], list[dict], dict]: ...  # rows, excluded, stats


@dataclass(slots=True)
class Excluded:
    """An input item that became an exclusion row before reaching the model (bad row, duplicate id...)."""

    row: dict


class Batch:
    """One batch of a stage. A plain class, not a dataclass: Prefect walks dataclass and
    collection parameters item by item (14 of 20 s at 20k pairs), but passes other objects whole."""

    __slots__ = ("index", "key", "items", "done", "excluded")

    def __init__(self, index: int, key: str, items: list[Any], done: bool, excluded: list[dict] | None = None):
        self.index, self.key, self.items, self.done = index, key, items, done
        self.excluded = excluded or []  # input exclusions only (an exclusion batch has no items)

    def __repr__(self) -> str:
        return f"Batch(index={self.index}, key={self.key!r}, items={len(self.items)}, done={self.done}, excluded={len(self.excluded)})"


@dataclass(slots=True)
class BatchResult:
    key: str
    n_rows: int
    n_excluded: int
    computed: bool
    seconds: float = 0.0  # whole batch, inside the worker
    stats: dict = field(default_factory=dict)  # model_calls, retries, model_s (backend), write_s (run store)


def iter_batches(store: RunStore, job: StageJob, items: Iterable[Any], batch_size: int) -> Iterator[Batch]:
    """Cut a stream of items (and :class:`Excluded` rows) into keyed batches, holding one batch at a time.

    Input exclusions travel in batches of their own, keyed by their item ids, so a
    million-row input never has to sit in memory.
    """
    cfg, model, tv = job.key_config(), job.model_id(), job.template_version()
    chunk: list[Any] = []
    excl: list[dict] = []
    index = 0

    n_excl_batches = 0

    def make(ids: list[str], what: Any, rows: list[Any], ex: list[dict]) -> Batch:
        nonlocal index, n_excl_batches
        if rows:
            key = batch_key(job.stage, ids, what, model, tv)
        else:  # exclusions: keyed by their content and ordinal too (ids can repeat: duplicate_id rows)
            digest = hashlib.sha256(json.dumps(ex, sort_keys=True, default=str).encode()).hexdigest()
            key = batch_key(job.stage, ids, {what: n_excl_batches, "rows": digest}, "", "")
            n_excl_batches += 1
        b = Batch(index, key, rows, store.has(job.stage, key), ex)
        index += 1
        return b

    for it in items:
        if isinstance(it, Excluded):
            excl.append(it.row)
            if len(excl) >= batch_size:
                yield make([e["item_id"] for e in excl], "input-exclusions", [], excl)
                excl = []
            continue
        chunk.append(it)
        if len(chunk) >= batch_size:
            yield make([job.item_id(x) for x in chunk], cfg, chunk, [])
            chunk = []
    if chunk:
        yield make([job.item_id(x) for x in chunk], cfg, chunk, [])
    if excl:
        yield make([e["item_id"] for e in excl], "input-exclusions", [], excl)


def run_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    """Compute one batch and write its shards, unless its shard already exists."""
    store = RunStore(store_root, probe=False)
    if store.has(job.stage, batch.key):
        return BatchResult(batch.key, -1, -1, computed=False)
    t0 = time.perf_counter()
    if not batch.items:  # input exclusions only: no model
        store.write_batch(job.stage, batch.key, [], job.schema, batch.excluded)
        dt = time.perf_counter() - t0
        return BatchResult(batch.key, 0, len(batch.excluded), True, dt, {"write_s": dt})
    rows, excluded, stats = job.compute(batch.items, batch.key)
    t1 = time.perf_counter()
    n_in = len(batch.items)
    accounted = len({r["__item__"] for r in rows if "__item__" in r}) if rows and "__item__" in rows[0] else None
    for r in rows:
        r.pop("__item__", None)
    if accounted is not None and accounted + len(excluded) != n_in:
        raise AssertionError(f"batch {batch.key}: {n_in} items in, {accounted} produced + {len(excluded)} excluded")
    store.write_batch(job.stage, batch.key, rows, job.schema, excluded)
    t2 = time.perf_counter()
    stats = {**stats, "compute_s": t1 - t0, "write_s": t2 - t1, "pid": os.getpid()}
    return BatchResult(batch.key, len(rows), len(excluded), True, t2 - t0, stats)
