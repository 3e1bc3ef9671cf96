"""Batch planning for stages: item keys, batches, and running one batch (no Prefect, no driver).

A stage is a list of input items cut into batches. Each item gets a
content-addressed key; an item whose key is in a finished shard is never computed
again. A :class:`StageJob` holds only configs (it is cheap to pickle for Ray) and
gets its backend from :func:`aifeedback.stage.cached_backend`, so the model loads
once per worker. :mod:`aifeedback.stage` drives the batches.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from . import usage
from .preference import Derivation
from .records import content_json
from .store import RunStore, batch_key

# Young-generation threshold while a stage runs. A batch allocates millions of short-lived
# containers (item dicts, message lists, prompt fields); with Python's default threshold (700)
# they trigger thousands of collections, and the full ones walk every object of the process -
# in a flow run that includes Prefect's (about 340k tracked objects against 80k without it).
# That made the same batch loop 1.6x slower inside the flow than outside it (issue 18).
# Batches build no reference cycles of their own (reference counting frees them), so
# collecting every 100k allocations instead keeps memory flat at a fraction of the cost.
STAGE_GC_THRESHOLD = (100_000, 50, 100)
_GC_LOCK = threading.Lock()
_GC_DEPTH = 0
_GC_SAVED: tuple[int, ...] = ()


@contextlib.contextmanager
def stage_gc():
    """Within the block, the garbage collector runs at :data:`STAGE_GC_THRESHOLD` (re-entrant, thread-safe;
    the thresholds before the outermost block come back after it)."""
    global _GC_DEPTH, _GC_SAVED
    with _GC_LOCK:
        if _GC_DEPTH == 0:
            _GC_SAVED = gc.get_threshold()
            if _GC_SAVED[0] != 0:  # 0: collection switched off by the caller, left so
                gc.set_threshold(*(max(a, b) for a, b in zip(STAGE_GC_THRESHOLD, _GC_SAVED)))
        _GC_DEPTH += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_DEPTH -= 1
            if _GC_DEPTH == 0:
                gc.set_threshold(*_GC_SAVED)


class StageJob(Protocol):
    stage: str
    schema: pa.Schema

    def item_id(self, item: Any) -> str: ...
    def key_config(self) -> dict: ...  # what changes outputs, besides item ids
    def model_id(self) -> str: ...
    def template_version(self) -> str: ...
    def compute(self, items: list[Any], key: str) -> tuple[list[dict], list[dict], dict]: ...  # rows, excluded, stats


class LabelStageJob(StageJob, Protocol):
    """A job of the ``labels`` stage: an LLM judge, a reward model or imported verdicts.

    Its rows hold only what the labeler produced; :meth:`derivation` is what readers
    apply to them (aifeedback/preference.py), and :meth:`manifest_info` what the
    manifest records about the labeler (template, constitution, reward model, verdict file).
    """

    def derivation(self) -> Derivation: ...
    def manifest_info(self) -> dict: ...


def label_manifest(job: LabelStageJob) -> dict:
    """The manifest entries of every label job: how readers derive labels, and the labeler's own."""
    return {"derive": job.derivation().as_manifest(), **job.manifest_info()}


@dataclass(slots=True)
class Excluded:
    """An input item that became an exclusion row before reaching the model (bad row, duplicate id...)."""

    row: dict


class Batch:
    """One batch of a stage. A plain class, not a dataclass: Prefect walks dataclass and
    collection parameters item by item (14 of 20 s at 20k pairs), but passes other objects whole."""

    __slots__ = ("index", "key", "items", "done", "excluded", "item_keys")

    def __init__(self, index: int, key: str, items: list[Any], done: bool, excluded: list[dict] | None = None, item_keys: list[str] | None = None):
        self.index, self.key, self.items, self.done = index, key, items, done
        self.excluded = excluded or []  # input exclusions only (an exclusion batch has no items)
        self.item_keys = item_keys or []  # one per item (or per input exclusion), in order

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


@dataclass
class Reuse:
    """What a stage invocation took from shards already on disk, item by item, and its shards in order."""

    index: dict[str, str]  # item key -> shard key, for every finished shard of the stage
    sizes: dict[str, int]  # shard key -> distinct item keys in it
    taken: dict[str, list[str]] = field(default_factory=dict)  # shard key -> item keys of this invocation taken from it
    order: list[str] = field(default_factory=list)  # every shard of this invocation (reused and new), in order of first use
    n_in: int = 0  # items (and input exclusions) of this invocation
    n_reused: int = 0

    def selection(self) -> dict[str, list[str]]:
        """The shards this invocation used only in part, with the item keys it took from each."""
        return {s: ks for s, ks in self.taken.items() if len(ks) < self.sizes.get(s, 0)}


def key_prefix(job: StageJob) -> bytes:
    """Everything of an item key but the item: the stage, its output-affecting config, model and template."""
    blob = json.dumps({"stage": job.stage, "config": job.key_config(), "model": job.model_id(), "template": job.template_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).digest()


def item_key(prefix: bytes, item: Any) -> str:
    """The content key of one input item under one output-affecting config: equal keys, equal outputs."""
    blob = content_json(item).encode("utf-8", "surrogatepass")  # json.dumps(item, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(prefix + blob, digest_size=12).hexdigest()


def iter_batches(store: RunStore, job: StageJob, items: Iterable[Any], batch_size: int, reuse: Reuse | None = None) -> Iterator[Batch]:
    """Cut a stream of items (and :class:`Excluded` rows) into batches of the items not yet computed.

    Reuse is per item: an item whose key (its content, the stage's output-affecting config,
    the model and the template) is in any finished shard of the stage is never computed
    again, whatever batch it was in, so ``batch_size``, input order and appended rows do
    not cause recomputation. New items are batched in input order; a batch's shard key is
    a hash of its item keys, and the shard's file marks it done (crash-safe, as before).
    Input exclusions travel in batches of their own. ``reuse`` collects what was reused.
    """
    if reuse is None:
        reuse = Reuse(*store.item_index(job.stage))
    prefix = key_prefix(job)
    excl_prefix = hashlib.sha256(prefix + b"input-exclusion").digest()
    seen_excl: dict[bytes, int] = {}  # identical bad rows stay distinct exclusions: keyed by content digest and occurrence
    chunk: list[Any] = []
    chunk_keys: list[str] = []
    excl: list[dict] = []
    excl_keys: list[str] = []
    index = 0

    def take(k: str) -> bool:
        shard = reuse.index.get(k)
        if shard is None:
            return False
        if shard not in reuse.taken:
            reuse.taken[shard] = []
            reuse.order.append(shard)
        reuse.taken[shard].append(k)
        reuse.n_reused += 1
        return True

    def make(rows: list[Any], keys: list[str], ex: list[dict]) -> Batch:
        nonlocal index
        key = batch_key(job.stage, keys, "", "", "")
        b = Batch(index, key, rows, store.has(job.stage, key), ex, keys)
        index += 1
        reuse.order.append(key)
        return b

    for it in items:
        reuse.n_in += 1
        if isinstance(it, Excluded):
            content = json.dumps(it.row, sort_keys=True, default=str)
            digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            n = seen_excl[digest] = seen_excl.get(digest, 0) + 1
            k = item_key(excl_prefix, [content, n])
            if take(k):
                continue
            excl.append(dict(it.row, item_key=k))
            excl_keys.append(k)
            if len(excl) >= batch_size:
                yield make([], excl_keys, excl)
                excl, excl_keys = [], []
            continue
        k = item_key(prefix, it)
        if take(k):
            continue
        chunk.append(it)
        chunk_keys.append(k)
        if len(chunk) >= batch_size:
            yield make(chunk, chunk_keys, [])
            chunk, chunk_keys = [], []
    if chunk:
        yield make(chunk, chunk_keys, [])
    if excl:
        yield make([], excl_keys, excl)


def run_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    """Compute one batch and write its shards, unless its shard already exists."""
    with stage_gc():  # also in a Ray worker, where no flow holds it
        return _run_batch(store_root, job, batch)


def _run_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    store = RunStore(store_root, probe=False)
    if store.has(job.stage, batch.key):
        return BatchResult(batch.key, -1, -1, computed=False)
    t0 = time.perf_counter()
    if not batch.items:  # input exclusions only: no model
        store.write_batch(job.stage, batch.key, [], job.schema, batch.excluded)
        dt = time.perf_counter() - t0
        return BatchResult(batch.key, 0, len(batch.excluded), True, dt, {"write_s": dt})
    with usage.meter() as used:  # what the backend reports while computing this batch, on this thread
        rows, excluded, stats = job.compute(batch.items, batch.key)
    return finish_batch(store_root, job, batch, rows, excluded, stats, used, t0)


def job_backend(job: StageJob) -> Any | None:
    """The backend config of a job that runs a model (``job.cfg.backend``), else None."""
    return getattr(getattr(job, "cfg", None), "backend", None)


def finish_batch(store_root: str, job: StageJob, batch: Batch, rows: Any, excluded: list[dict], stats: dict, used: usage.Meter, t0: float, batch_ids: dict[str, str | None] | None = None) -> BatchResult:
    """Check that every item is accounted for, key the rows and exclusions, write the shard and its usage line.
    ``batch_ids``: item id -> the Batch API batch(es) that answered it (batch mode), stored as ``batch_id``."""
    store = RunStore(store_root, probe=False)
    t1 = time.perf_counter()
    n_in = len(batch.items)
    key_of = dict(zip((job.item_id(x) for x in batch.items), batch.item_keys))
    if isinstance(rows, pa.Table):  # rows as columns: their item ids in the "__item__" column
        ids = rows.column("__item__").to_pylist()
        accounted = set(ids)
    else:
        accounted = {r["__item__"] for r in rows}
    if len(accounted) + len(excluded) != n_in:
        raise AssertionError(f"batch {batch.key}: {n_in} items in, {len(accounted)} produced + {len(excluded)} excluded")
    bids = batch_ids or {}
    if isinstance(rows, pa.Table):
        if "batch_id" in rows.column_names:
            rows = rows.drop_columns(["batch_id"])
        rows = rows.drop_columns(["__item__"]).append_column("item_key", pa.array([key_of[i] for i in ids], pa.string())).append_column("batch_id", pa.array([bids.get(i) for i in ids], pa.string()))
    else:
        for r in rows:
            item = r.pop("__item__")
            r["item_key"] = key_of[item]
            r["batch_id"] = bids.get(item)
    for e in excluded:
        e["item_key"] = key_of.get(e["item_id"])
        e["batch_id"] = bids.get(e["item_id"])
    rec = usage.batch_record(job.stage, batch.key, used, job_backend(job))
    store.write_batch(job.stage, batch.key, rows, job.schema, excluded)
    usage.append(store.root, rec)  # after the shard: a resumed run never counts a batch it did not finish
    t2 = time.perf_counter()
    stats = {**stats, "compute_s": t1 - t0, "write_s": t2 - t1, "pid": os.getpid(), "usage": rec}
    return BatchResult(batch.key, len(rows), len(excluded), True, t2 - t0, stats)
