"""`aifeedback import-labels`: a judge's verdict file becomes the labels stage of a run (labelers/import_labels.py)."""

from __future__ import annotations

from aifeedback.config import LabelConfig, build_config
from aifeedback.errors import InputError
from aifeedback.store import RunStore
from labelers.import_labels import (
    ImportJob,
    check_overlap,
    file_digest,
    join_pairs,
    read_verdicts,
)
from labelers.job import load_pairs, pairs_from_responses
from labelers.stage import LabelStage


def run_import_labels(
    run_dir: str,
    verdicts: str,
    judge: str,
    config_path: str | None = None,
    overrides: dict | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    prob_column: str | None = None,
    id_prefix: str = "",
) -> dict:
    """Label rows from ``verdicts`` for the run's pairs (its responses, or the pairs file in the config's ``input``)."""
    cfg = build_config(LabelConfig, config_path, overrides)
    store = RunStore(run_dir)
    table, counts = read_verdicts(verdicts, id_column, label_column, prob_column, id_prefix)
    if cfg.input:
        pairs, excluded = load_pairs(cfg)
    else:
        pairs, excluded = pairs_from_responses(store, cfg.limit), []
        if not pairs:
            raise InputError(f"run {store.root} has no pairs: pass the pairs the judge saw with --input (e.g. from `aifeedback import-pairs`)")
    matched = check_overlap([p["pair_id"] for p in pairs], table, verdicts)
    overlap = {"verdicts_matched": matched, "verdicts_matching_no_pair": len(table) - matched}
    job = ImportJob(judge, verdicts, file_digest(verdicts), counts["column"], tie_margin=cfg.tie_margin, extra={"verdict_counts": counts, **overlap})
    store.write_json("configs/import_labels.json", {"verdicts": verdicts, "judge": judge, **counts, "label_config": cfg.model_dump(mode="json")})
    summary = LabelStage(job, join_pairs(pairs, table, verdicts), cfg.batch_size, excluded).run(store)
    summary.update({"judge": judge, "verdicts_in_file": counts["rows"], **overlap, "verdicts_unreadable": counts["unreadable"], "duplicate_verdict_ids": counts["duplicate_ids"]})
    print(f"import-labels: {summary['n_in']} pairs in = {summary['n_out']} labelled + {summary['n_excluded']} excluded (no verdict or bad row); {overlap['verdicts_matching_no_pair']} verdicts matched no pair, {counts['unreadable']} unreadable")
    return summary
