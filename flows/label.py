"""Label flow: position-debiased AI preference labels for pairs, in the run store."""

from __future__ import annotations

import os

from prefect import flow

from aifeedback.config import LabelConfig, build_config
from aifeedback.store import RunStore
from labelers.job import LabelJob, iter_pairs, pairs_from_responses
from labelers.views import rankings

from .common import execute_stage, make_task_runner


@flow(name="label", log_prints=True)
def label_flow(
    run_dir: str = "runs/default",
    config_path: str | None = None,
    overrides: dict | None = None,
    max_batches: int | None = None,
    runner: str = "sequential",
    workers: int | None = None,
    ray_address: str | None = None,
    labeler: str | None = None,
    gold: str | None = None,
) -> dict:
    """Label every pair (both orders by default); re-runs compute only missing batches.

    ``runner``: sequential (in this process), threads, or ray (each batch a task on a
    Ray worker that loads the model once and writes its own shards; ``workers`` CPUs
    of a local cluster, or the cluster at ``ray_address``). Labels do not depend on it.
    ``labeler`` "rm:PATH": a reward model labels the pairs (labelers/rm_labeler.py), its
    temperature fitted on ``gold`` when given, else the config's ``temperature``.
    """
    cfg = build_config(LabelConfig, config_path, overrides)
    store = RunStore(run_dir)
    if labeler and labeler != "llm":
        from labelers.rm_labeler import rm_label_job

        job = rm_label_job(labeler, cfg, gold)
        print(f"reward model labeler {job.model_id()}, temperature {job.temperature:.4g}" + (f" (fitted on {gold})" if gold else ""))
    else:
        job = LabelJob(cfg)
    pairs = iter_pairs(cfg) if cfg.input else pairs_from_responses(store, cfg.limit)
    store.write_json("configs/label.json", cfg.model_dump(mode="json"))
    summary = execute_stage(
        store,
        job,
        pairs,
        cfg.batch_size,
        max_batches=max_batches,
        task_runner=make_task_runner(runner, workers, ray_address),
        max_in_flight=2 * (workers or os.cpu_count() or 1),
        extra_manifest={"derive": job.derivation(), **job.manifest_info()} if hasattr(job, "manifest_info") else {"derive": job.derivation(), "template": job.template.model_dump(), "constitution_id": job.constitution.id if job.constitution else None, "constitution_version": job.constitution_version},
    )
    ranks_path = store.root / "labels_rankings.parquet"
    if summary["complete"]:
        ranks = rankings(store.read_table("labels").to_pylist()) if not cfg.input else []  # listwise: only pairs built from this run's responses
        if ranks:
            import pyarrow as pa

            summary["rankings"] = str(store.write_table(pa.Table.from_pylist(ranks), ranks_path))
        else:
            ranks_path.unlink(missing_ok=True)  # never leave rankings of an earlier labelling
    if summary["complete"]:
        print(f"labels: {summary['n_in']} pairs in = {summary['n_out']} labelled + {summary['n_excluded']} excluded")
    return summary
