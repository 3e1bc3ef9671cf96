"""Running a stage as Prefect tasks: one task per batch, never one per item."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aifeedback.provenance import git_commit, library_versions
from aifeedback.stage import Batch, BatchResult, StageJob, plan, run_batch
from aifeedback.store import RunStore, batch_key


@task(name="stage-batch", cache_policy=NO_CACHE, task_run_name="{job.stage}-{batch.index}")
def stage_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
    """One batch: compute and write its shards (skipped when the shard exists)."""
    return run_batch(store_root, job, batch)


def _rows(path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def execute_stage(
    store: RunStore,
    job: StageJob,
    items: list[Any],
    batch_size: int,
    input_excluded: list[dict] | None = None,
    max_batches: int | None = None,
    parallel: bool = False,
    extra_manifest: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Run every missing batch of a stage, then write the stage manifest. Returns a summary."""
    t0 = time.perf_counter()
    try:
        log = get_run_logger()
    except Exception:  # called outside a flow run
        import logging

        log = logging.getLogger("aifeedback")
    batches = plan(store, job, items, batch_size)
    todo = [b for b in batches if not b.done]
    if max_batches is not None:
        todo = todo[:max_batches]
    log.info("%s: %d items in %d batches, %d to compute", job.stage, len(items), len(batches), len(todo))
    results: list[BatchResult] = []
    with Progress(TextColumn(f"[bold]{job.stage}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not show_progress) as bar:
        tid = bar.add_task(job.stage, total=len(todo))
        if parallel and todo:
            futures = [stage_batch.submit(str(store.root), job, b) for b in todo]
            for f in futures:
                results.append(f.result())
                bar.advance(tid)
        else:
            for b in todo:
                results.append(stage_batch(str(store.root), job, b))
                bar.advance(tid)
    keys = [b.key for b in batches]
    if input_excluded:
        ikey = batch_key(job.stage, [e["item_id"] for e in input_excluded], "input-exclusions", "", "")
        if not store.has(job.stage, ikey):
            store.write_batch(job.stage, ikey, [], job.schema, input_excluded)
        keys.append(ikey)
    complete = all(store.has(job.stage, k) for k in keys)
    n_rows = sum(_rows(store.shard_path(job.stage, k)) for k in keys if store.has(job.stage, k))
    n_excl = sum(_rows(store.excluded_path(job.stage, k)) for k in keys if store.has(job.stage, k))
    calls = sum(r.stats.get("model_calls", 0) for r in results if r.computed)
    summary = {
        "stage": job.stage,
        "run_dir": str(store.root),
        "complete": complete,
        "n_in": len(items) + len(input_excluded or []),
        "n_out": n_rows,
        "n_excluded": n_excl,
        "batches": len(batches),
        "batches_computed": sum(1 for r in results if r.computed),
        "model_calls": calls,
        "retries": sum(r.stats.get("retries", 0) for r in results if r.computed),
        "model_seconds": round(sum(r.seconds for r in results), 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if complete:
        store.write_manifest(
            job.stage,
            keys,
            {
                **{k: summary[k] for k in ("n_in", "n_out", "n_excluded", "batches")},
                "key_config": job.key_config(),
                "model": job.model_id(),
                "template_version": job.template_version(),
                "git_commit": git_commit(),
                "versions": library_versions(),
                **(extra_manifest or {}),
            },
        )
    log.info("%s: %s", job.stage, {k: summary[k] for k in ("n_in", "n_out", "n_excluded", "batches_computed", "model_calls")})
    return summary
