"""Running a stage as Prefect tasks: one task per batch, never one per item."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aifeedback.provenance import git_commit, library_versions
from aifeedback.stage import Batch, BatchResult, Excluded, Reuse, StageJob, iter_batches, run_batch, stage_gc
from aifeedback.store import RunStore
from aifeedback.usage import summarise as usage_summary


@task(name="stage-batch", cache_policy=NO_CACHE, task_run_name="{job.stage}-{batch.index}")
def stage_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    """One batch: compute and write its shards (skipped when the shard exists)."""
    return run_batch(store_root, job, batch)


def _rows(path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _count(store: RunStore, stage: str, keys: list[str], selection: dict[str, list[str]]) -> tuple[int, int]:
    """(rows, exclusions) over the invocation's shards; shards used in part count only the items taken from them."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
                n = _rows(path)
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
    task_runner: Any = None,
    max_in_flight: int = 4,
    extra_manifest: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Run every missing batch of a stage, then write the stage manifest. Returns a summary.

    ``items`` may be a generator (with :class:`Excluded` rows mixed in): batches are
    cut as it is read. With a ``task_runner`` (see :func:`make_task_runner`) batches
    run as its tasks (threads, or Ray workers that each write their own shards), at
    most ``max_in_flight`` at once, so memory stays flat at any size.
    """
    t0 = time.perf_counter()
    try:
        log = get_run_logger()
    except Exception:  # called outside a flow run
        import logging

        log = logging.getLogger("aifeedback")
    stream = itertools.chain((Excluded(e) for e in input_excluded or []), items)
    reuse = Reuse(*store.item_index(job.stage))
    keys: list[str] = []  # new shards of this invocation, in order
    results: list[BatchResult] = []
    pending: deque = deque()
    n_batches = n_submitted = 0
    runner_ctx = task_runner if task_runner is not None else contextlib.nullcontext()
    with stage_gc(), runner_ctx, Progress(TextColumn(f"[bold]{job.stage}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not show_progress) as bar:
        tid = bar.add_task(job.stage, total=None)
        for b in iter_batches(store, job, stream, batch_size, reuse):
            keys.append(b.key)
            if not b.items:  # input exclusions: no model, no task
                if not b.done:
                    run_batch(str(store.root), job, b)
                continue
            n_batches += 1
            if b.done:
                continue
            if max_batches is not None and n_submitted >= max_batches:
                continue
            n_submitted += 1
            if task_runner is not None:
                pending.append(task_runner.submit(stage_batch, parameters={"store_root": str(store.root), "job": job, "batch": b}))
                while len(pending) >= max_in_flight:
                    results.append(pending.popleft().result())
                    bar.advance(tid)
            else:
                results.append(stage_batch(str(store.root), job, b))
                bar.advance(tid)
        while pending:
            results.append(pending.popleft().result())
            bar.advance(tid)
    n_in = reuse.n_in
    log.info("%s: %d items, %d reused from earlier shards, %d new in %d batches, %d computed", job.stage, n_in, reuse.n_reused, n_in - reuse.n_reused, n_batches, sum(1 for r in results if r.computed))
    complete = all(store.has(job.stage, k) for k in keys)
    selection = reuse.selection()
    all_keys = list(dict.fromkeys(reuse.order))  # reused and new shards, in order of first use
    n_rows, n_excl = _count(store, job.stage, all_keys, selection)
    calls = sum(r.stats.get("model_calls", 0) for r in results if r.computed)
    summary = {
        "stage": job.stage,
        "run_dir": str(store.root),
        "complete": complete,
        "n_in": n_in,
        "n_out": n_rows,
        "n_excluded": n_excl,
        "batches": n_batches,
        "items_reused": reuse.n_reused,
        "batches_computed": sum(1 for r in results if r.computed),
        "model_calls": calls,
        "retries": sum(r.stats.get("retries", 0) for r in results if r.computed),
        "model_seconds": round(sum(r.stats.get("model_s", r.stats.get("compute_s", 0.0)) for r in results), 3),
        "compute_seconds": round(sum(r.stats.get("compute_s", 0.0) for r in results), 3),
        "store_seconds": round(sum(r.stats.get("write_s", 0.0) for r in results), 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "worker_processes": len({r.stats["pid"] for r in results if "pid" in r.stats}),
        **usage_summary([r.stats for r in results if r.computed]),  # tokens, cost, the endpoint's settled concurrency
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
    log.info("%s: %s", job.stage, {k: summary[k] for k in ("n_in", "n_out", "n_excluded", "batches_computed", "model_calls")})
    log.info("%s: %s", job.stage, {k: summary[k] for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "concurrency", "concurrency_min", "rate_limited_total") if k in summary})
    return summary


RUNNERS = ("sequential", "threads", "ray")


def make_task_runner(runner: str, workers: int | None = None, ray_address: str | None = None):
    """The Prefect task runner that runs a stage's batches: None (sequential, in this process), threads or Ray.

    Ray: a local cluster of ``workers`` CPUs by default, or the cluster at
    ``ray_address`` (``auto`` or ``ray://HOST:10001``). A Ray task costs about
    250 ms here against 11 ms for a thread, so batches should be large shards.
    """
    if runner == "sequential":
        return None
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers or 4)
    if runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            from aifeedback.errors import ConfigError

            raise ConfigError("runner ray needs prefect-ray: pip install 'aifeedback[ray]'") from None
        init: dict = {"include_dashboard": False, "log_to_driver": False}
        if not ray_address:
            init["num_cpus"] = workers or os.cpu_count() or 1
        api_url = _api_url()
        if api_url:  # workers report to this process's Prefect API instead of each starting a temporary server
            init["runtime_env"] = {"env_vars": {"PREFECT_API_URL": api_url}}
        return RayTaskRunner(address=ray_address, init_kwargs=init)
    from aifeedback.errors import ConfigError

    raise ConfigError(f"unknown runner {runner!r}; use one of {RUNNERS}")


def _api_url() -> str | None:
    """The Prefect API this process talks to: the configured one, or its temporary server's."""
    from prefect.settings import get_current_settings

    url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if url:
        return str(url)
    try:
        from prefect.server.api.server import SubprocessASGIServer

        running = [srv for srv in SubprocessASGIServer._instances.values() if srv.running]
        return running[0].api_url if running else None
    except Exception:  # a Prefect without that class: workers fall back to their own temporary server
        return None
