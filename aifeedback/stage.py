"""Batch planning for stages, with no Prefect in it (tasks wrap :func:`run_batch`).

A stage is a list of input items cut into batches. Each batch gets a
content-addressed key; a batch whose shard exists is skipped. A :class:`StageJob`
holds only configs (it is cheap to pickle for Ray) and gets its backend from the
per-process cache, so the model loads once per worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from .backends import Backend, make_backend
from .config import BackendConfig
from .store import RunStore, batch_key

_BACKENDS: dict[str, Backend] = {}


def cached_backend(cfg: BackendConfig) -> Backend:
    """One backend per config per process."""
    key = cfg.model_dump_json()
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
class Batch:
    index: int
    key: str
    items: list[Any]
    done: bool


@dataclass(slots=True)
class BatchResult:
    key: str
    n_rows: int
    n_excluded: int
    computed: bool
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def plan(store: RunStore, job: StageJob, items: list[Any], batch_size: int) -> list[Batch]:
    batches = []
    cfg = job.key_config()
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        key = batch_key(job.stage, [job.item_id(x) for x in chunk], cfg, job.model_id(), job.template_version())
        batches.append(Batch(i // batch_size, key, chunk, store.has(job.stage, key)))
    return batches


def run_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    """Compute one batch and write its shards, unless its shard already exists."""
    store = RunStore(store_root)
    if store.has(job.stage, batch.key):
        return BatchResult(batch.key, -1, -1, computed=False)
    t0 = time.perf_counter()
    rows, excluded, stats = job.compute(batch.items, batch.key)
    n_in = len(batch.items)
    accounted = len({r["__item__"] for r in rows if "__item__" in r}) if rows and "__item__" in rows[0] else None
    for r in rows:
        r.pop("__item__", None)
    if accounted is not None and accounted + len(excluded) != n_in:
        raise AssertionError(f"batch {batch.key}: {n_in} items in, {accounted} produced + {len(excluded)} excluded")
    store.write_batch(job.stage, batch.key, rows, job.schema, excluded)
    return BatchResult(batch.key, len(rows), len(excluded), True, time.perf_counter() - t0, stats)
