"""Critique-and-revise flow (Constitutional AI, supervised stage) over a run's responses."""

from __future__ import annotations

import pyarrow as pa

from aifeedback.config import ReviseConfig, build_config
from aifeedback.revision import ReviseJob, revision_pairs, sft_rows
from aifeedback.stage import execute_stage
from aifeedback.store import RunStore


def run_revise(run_dir: str = "runs/default", config_path: str | None = None, overrides: dict | None = None, max_batches: int | None = None) -> dict:
    """K critique->revise rounds per response; writes the chains, an SFT set and revision preference pairs."""
    cfg = build_config(ReviseConfig, config_path, overrides)
    store = RunStore(run_dir)
    job = ReviseJob(cfg)
    items = store.read_table("responses").to_pylist()
    if cfg.limit:
        items = items[: cfg.limit]
    store.write_json("configs/revise.json", cfg.model_dump(mode="json"))
    summary = execute_stage(
        store, job, items, cfg.batch_size, max_batches=max_batches, extra_manifest={"constitution_id": job.constitution.id, "constitution_version": job.constitution_version}
    )
    if summary["complete"]:
        rows = store.read_table("revisions").to_pylist()
        out = store.root / "revise_outputs"
        out.mkdir(exist_ok=True)
        sft, pairs = sft_rows(rows), revision_pairs(rows)
        store.write_table(pa.Table.from_pylist(sft), out / "sft.parquet")
        store.write_table(pa.Table.from_pylist(pairs), out / "preferences.parquet")
        summary.update(
            n_degenerate=sum(r["degenerate"] for r in rows),
            n_sft=len(sft),
            n_revision_pairs=len(pairs),
            sft=str(out / "sft.parquet"),
            preferences=str(out / "preferences.parquet"),
        )
        print(f"revisions: {summary['n_in']} in = {summary['n_out']} out + {summary['n_excluded']} excluded; {summary['n_degenerate']} flagged degenerate")
    return summary
