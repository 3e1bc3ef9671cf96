"""Label flow: position-debiased AI preference labels for pairs, in the run store."""

from __future__ import annotations

from aifeedback.config import LabelConfig, build_config
from aifeedback.store import RunStore
from labelers.stage import build_label_stage
from labelers.views import rankings

from .common import submitter


def run_label(
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
    stage = build_label_stage(store, cfg, labeler, gold)
    if labeler not in (None, "llm"):
        print(f"reward model labeler {stage.job.model_id()}, temperature {stage.job.derivation().temperature:.4g}" + (f" (fitted on {gold})" if gold else ""))
    store.write_json("configs/label.json", cfg.model_dump(mode="json"))
    summary = stage.run(store, max_batches=max_batches, submitter=submitter(runner, workers, ray_address))
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
