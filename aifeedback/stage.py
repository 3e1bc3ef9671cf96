"""The stage driver: runs any :class:`~aifeedback.batches.StageJob`, with pluggable submission.

:func:`execute_stage` reads the input, cuts it into batches of the items not yet
computed (:func:`~aifeedback.batches.iter_batches`), hands each batch to a
:class:`Submitter`, and writes the stage manifest and the run's history. It imports
no Prefect: the default submitter runs batches in this process, one after another;
:class:`Threads` runs them on a thread pool, :class:`Ray` on Ray workers (a local
cluster, or the one at ``ray_address``). ``flows.common`` adds one that runs each
batch as a Prefect task, used when a command runs as a Prefect flow.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from .backends import Backend, make_backend
from .batches import (
    BatchResult,
    Excluded,
    Reuse,
    StageJob,
    iter_batches,
    job_backend,
    run_batch,
    stage_gc,
)
from .config import BackendConfig
from .errors import ConfigError
from .store import RunStore
from .usage import is_batch

_BACKENDS: dict[str, Backend] = {}
_CREATE = threading.Lock()
log = logging.getLogger("aifeedback.stage")


def cached_backend(cfg: BackendConfig) -> Backend:
    """One backend per config per process (thread-safe: a thread runner loads the model once).

    In-process engines serialise their own calls (transformers, vllm), so threads may share one.
    """
    key = cfg.model_dump_json()
    with _CREATE:
        if key not in _BACKENDS:
            _BACKENDS[key] = make_backend(cfg)
        return _BACKENDS[key]


@contextlib.contextmanager
def backend_override(cfg: BackendConfig, backend: Backend):
    """Within the block, :func:`cached_backend` hands out ``backend`` for ``cfg`` (a dry run: ``aifeedback estimate label``)."""
    key = cfg.model_dump_json()
    with _CREATE:
        before = _BACKENDS.get(key)
        _BACKENDS[key] = backend
    try:
        yield backend
    finally:
        with _CREATE:
            if before is None:
                _BACKENDS.pop(key, None)
            else:
                _BACKENDS[key] = before


class Submitter(Protocol):
    """Where a stage's batches run. ``submit`` returns a future (``.result()``); ``max_in_flight`` bounds memory.

    A submitter is a context manager: it holds its workers (threads, a Ray cluster) only inside the block.
    """

    name: str
    max_in_flight: int
    logger: logging.Logger | logging.LoggerAdapter

    def submit(self, fn: Callable[..., BatchResult], *args: Any) -> Any: ...
    def __enter__(self) -> "Submitter": ...
    def __exit__(self, *exc: Any) -> None: ...


class InProcess(contextlib.AbstractContextManager):
    """Each batch runs in this process when submitted (the default)."""

    name = "sequential"
    max_in_flight = 1
    logger = log

    def submit(self, fn: Callable[..., BatchResult], *args: Any) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    def __exit__(self, *exc: Any) -> None:
        return None


class Threads(contextlib.AbstractContextManager):
    """Batches on a pool of ``workers`` threads (a remote endpoint's requests overlap; in-process engines serialise)."""

    name = "threads"
    logger = log

    def __init__(self, workers: int | None = None):
        self.workers = workers or 4
        self.max_in_flight = 2 * self.workers
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "Threads":
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="aifeedback-batch")
        return self

    def submit(self, fn: Callable[..., BatchResult], *args: Any) -> Future:
        assert self._pool is not None, "submit inside `with Threads(...)`"
        return self._pool.submit(fn, *args)

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
            self._pool = None


class _RayResult:
    __slots__ = ("ref",)

    def __init__(self, ref: Any):
        self.ref = ref

    def result(self) -> BatchResult:
        import ray

        return ray.get(self.ref)


class Ray(contextlib.AbstractContextManager):
    """Batches as Ray tasks: each worker loads the model once and writes its own shards.

    A local cluster of ``workers`` CPUs by default (shut down after the stage), or the
    cluster at ``ray_address`` (``auto`` or ``ray://HOST:10001``), left running. A Ray
    task costs about 250 ms here against 11 ms for a thread, so batches should be large.
    """

    name = "ray"
    logger = log

    def __init__(self, workers: int | None = None, ray_address: str | None = None):
        self.workers, self.address = workers, ray_address
        self.max_in_flight = 2 * (workers or os.cpu_count() or 1)
        self._remote: Any = None
        self._started = False

    def __enter__(self) -> "Ray":
        try:
            import ray
        except ImportError:
            raise ConfigError("runner ray needs ray: pip install 'aifeedback[ray]'") from None
        if not ray.is_initialized():
            init: dict = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                init["address"] = self.address
            else:
                init["num_cpus"] = self.workers or os.cpu_count() or 1
            ray.init(**init)
            self._started = not self.address
        elif self.address and self.address != "auto" and not self.address.startswith("ray://"):
            connected = ray.get_runtime_context().gcs_address
            if connected != self.address:
                raise ConfigError(f"`ray_address` is {self.address}, but this process is already connected to the Ray cluster at {connected}; run the command in a fresh process, or set ray_address={connected}")
        self._remote = ray.remote(num_cpus=1)(run_batch)
        return self

    def submit(self, fn: Callable[..., BatchResult], *args: Any) -> _RayResult:
        if fn is not run_batch:
            raise ValueError("the ray submitter runs run_batch only")
        return _RayResult(self._remote.remote(*args))

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


RUNNERS = ("sequential", "threads", "ray")


def make_submitter(runner: str = "sequential", workers: int | None = None, ray_address: str | None = None) -> Submitter:
    """The submitter a ``runner`` names (``sequential``, ``threads`` or ``ray``), with no Prefect."""
    if runner == "sequential":
        return InProcess()
    if runner == "threads":
        return Threads(workers)
    if runner == "ray":
        return Ray(workers, ray_address)
    raise ConfigError(f"runner: unknown value {runner!r}; use one of {', '.join(RUNNERS)}")


def _count(store: RunStore, stage: str, keys: list[str], selection: dict[str, list[str]]) -> tuple[int, int]:
    """(rows, exclusions) over the invocation's shards; shards used in part count only the items taken from them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    n_rows = n_excl = 0
    for k in keys:
        if not store.has(stage, k):
            continue
        sel = pa.array(selection[k], pa.string()) if k in selection else None
        for path, is_excl in ((store.shard_path(stage, k), False), (store.excluded_path(stage, k), True)):
            if not path.is_file():
                continue
            if sel is not None:
                n = pc.sum(pc.is_in(pq.read_table(path, columns=["item_key"]).column(0), value_set=sel)).as_py() or 0
            else:
                n = pq.ParquetFile(path).metadata.num_rows
            if is_excl:
                n_excl += n
            else:
                n_rows += n
    return n_rows, n_excl


def execute_stage(
    store: RunStore,
    job: StageJob,
    items: Iterable[Any],
    batch_size: int,
    input_excluded: list[dict] | None = None,
    max_batches: int | None = None,
    submitter: Submitter | None = None,
    extra_manifest: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Run every missing batch of a stage, then write the stage manifest and a history line. Returns a summary.

    ``items`` may be a generator (with :class:`Excluded` rows mixed in): batches are
    cut as it is read, and at most ``submitter.max_in_flight`` run at once, so memory
    stays flat at any size. ``extra_manifest`` adds a job's own entries (a label
    job's :meth:`~aifeedback.label_stage.LabelStageJob.manifest_info`).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from .provenance import git_commit, library_versions
    from .usage import summarise as usage_summary

    t0 = time.perf_counter()
    sub = submitter if submitter is not None else InProcess()
    lg = sub.logger
    stream = itertools.chain((Excluded(e) for e in input_excluded or []), items)
    reuse = Reuse(*store.item_index(job.stage))
    keys: list[str] = []  # shards of this invocation, in order
    results: list[BatchResult] = []
    pending: deque = deque()
    n_batches = n_submitted = 0
    root = str(store.root)
    bcfg = job_backend(job)
    batch_mode = is_batch(bcfg)  # backend.batch or batch_file_only (openai)
    held: list = []  # batch mode: the stage batches to run through batch files (aifeedback/batch_api.py)
    batch_info: dict = {}
    if batch_mode and sub.name != InProcess.name:
        lg.info("%s: batch mode runs its batches in this process; runner %s is not used", job.stage, sub.name)
    with stage_gc(), sub, Progress(TextColumn(f"[bold]{job.stage}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not show_progress) as bar:
        tid = bar.add_task(job.stage, total=None)
        for b in iter_batches(store, job, stream, batch_size, reuse):
            keys.append(b.key)
            if not b.items:  # input exclusions: no model, written here
                if not b.done:
                    run_batch(root, job, b)
                continue
            n_batches += 1
            if b.done or (max_batches is not None and n_submitted >= max_batches):
                continue
            n_submitted += 1
            if batch_mode:
                held.append(b)
                continue
            pending.append(sub.submit(run_batch, root, job, b))
            while len(pending) >= sub.max_in_flight:
                results.append(pending.popleft().result())
                bar.advance(tid)
        while pending:
            results.append(pending.popleft().result())
            bar.advance(tid)
        if held:
            from .batch_api import run_batched

            done, batch_info = run_batched(store, job, held, bcfg, lg)
            results += done
    n_in = reuse.n_in
    computed = [r for r in results if r.computed]
    lg.info("%s: %d items, %d reused from earlier shards, %d new in %d batches, %d computed", job.stage, n_in, reuse.n_reused, n_in - reuse.n_reused, n_batches, len(computed))
    complete = all(store.has(job.stage, k) for k in keys)
    selection = reuse.selection()
    all_keys = list(dict.fromkeys(reuse.order))  # reused and new shards, in order of first use
    n_rows, n_excl = _count(store, job.stage, all_keys, selection)
    summary = {
        "stage": job.stage,
        "run_dir": root,
        "complete": complete,
        "n_in": n_in,
        "n_out": n_rows,
        "n_excluded": n_excl,
        "batches": n_batches,
        "items_reused": reuse.n_reused,
        "batches_computed": len(computed),
        "model_calls": sum(r.stats.get("model_calls", 0) for r in computed),
        "retries": sum(r.stats.get("retries", 0) for r in computed),
        "model_seconds": round(sum(r.stats.get("model_s", r.stats.get("compute_s", 0.0)) for r in results), 3),
        "compute_seconds": round(sum(r.stats.get("compute_s", 0.0) for r in results), 3),
        "store_seconds": round(sum(r.stats.get("write_s", 0.0) for r in results), 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "worker_processes": len({r.stats["pid"] for r in results if "pid" in r.stats}),
        "runner": "batch" if batch_mode else sub.name,
        **usage_summary([r.stats for r in computed]),  # tokens, cost, the endpoint's settled concurrency
        **batch_info,  # batch mode: batches created this invocation, polls, the run's batches by state
    }
    if complete:
        store.write_manifest(
            job.stage,
            all_keys,
            {
                **{k: summary[k] for k in ("n_in", "n_out", "n_excluded", "batches")},
                "key_config": job.key_config(),
                "model": job.model_id(),
                "template_version": job.template_version(),
                "git_commit": git_commit(),
                "versions": library_versions(),
                **(extra_manifest or {}),
            },
            selection=selection,
        )
    store.append_history({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary})
    lg.info("%s: %s", job.stage, {k: summary[k] for k in ("n_in", "n_out", "n_excluded", "batches_computed", "model_calls")})
    lg.info("%s: %s", job.stage, {k: summary[k] for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "concurrency", "concurrency_min", "rate_limited_total") if k in summary})
    return summary
