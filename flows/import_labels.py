"""`aifeedback import-labels`: a judge's verdict file (labelers/import_labels.py), or AlpacaEval's annotations with
their pairs (labelers/alpaca_eval.py), becomes the labels stage of a run."""

from __future__ import annotations

from aifeedback.config import LabelConfig, build_config
from aifeedback.errors import ConfigError, InputError
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
    judge: str | None = None,
    config_path: str | None = None,
    overrides: dict | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    prob_column: str | None = None,
    id_prefix: str = "",
    source_format: str = "verdicts",
    alpaca_eval: dict | None = None,
) -> dict:
    """Label rows from ``verdicts`` for the run's pairs (its responses, or the pairs file in the config's ``input``);
    with ``source_format="alpaca-eval"``, pairs and labels from an AlpacaEval folder (``alpaca_eval``: AlpacaEvalConfig keys)."""
    cfg = build_config(LabelConfig, config_path, overrides)
    store = RunStore(run_dir)
    if source_format == "alpaca-eval":
        given = [f for f, v in (("--id-column", id_column), ("--label-column", label_column), ("--prob-column", prob_column), ("--id-prefix", id_prefix)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} read a verdict file; AlpacaEval files have fixed columns: drop them")
        return _import_alpaca_eval(store, cfg, verdicts, judge, alpaca_eval or {})
    if source_format != "verdicts":
        raise ConfigError(f"unknown import format {source_format!r}; use verdicts or alpaca-eval")
    if alpaca_eval:
        raise ConfigError(f"{sorted(alpaca_eval)} apply to --format alpaca-eval only")
    if not judge:
        raise ConfigError("a verdict file does not name its judge: pass --judge NAME (e.g. gpt-3.5-turbo)")
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


def _import_alpaca_eval(store: RunStore, cfg: LabelConfig, source: str, judge: str | None, options: dict) -> dict:
    """AlpacaEval annotation pairs (and derived pairs, when asked) as one labels stage."""
    from labelers.alpaca_eval import JUDGE, AlpacaEvalConfig, alpaca_eval_items, read_alpaca_eval

    ae = build_config(AlpacaEvalConfig, None, options)
    if cfg.input or cfg.limit:
        raise ConfigError("AlpacaEval files hold their own pairs: drop `input` and `limit` (use --instructions N for a subset)")
    data = read_alpaca_eval(source, ae)
    judge = judge or JUDGE
    job = ImportJob(judge, source, data.digest, "preference", tie_margin=cfg.tie_margin, extra={"format": "alpaca-eval", "alpaca_eval": data.manifest(ae)})
    store.write_json("configs/import_labels.json", {"format": "alpaca-eval", "source": source, "judge": judge, "alpaca_eval": data.manifest(ae), "label_config": cfg.model_dump(mode="json")})
    summary = LabelStage(job, alpaca_eval_items(data, ae), cfg.batch_size).run(store)
    summary.update({"judge": judge, **data.counts})
    print(
        f"import-labels (alpaca-eval): {summary['n_in']} pairs in = {summary['n_out']} labelled + {summary['n_excluded']} excluded; "
        f"{data.counts['annotation_rows']} annotation rows, {data.counts['derived_pairs']} derived pairs (derive_pairs={ae.derive_pairs}, eps={ae.eps})"
    )
    return summary
