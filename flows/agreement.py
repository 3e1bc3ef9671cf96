"""Agreement flow: AI judges vs human labels -> report.html, report.md, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from aifeedback.errors import InputError
from labelers.agreement import evaluate, human_ceiling, judge_from_file, judge_from_run
from labelers.human_data import load_human
from labelers.report import write_report


def _split(spec: str) -> tuple[str, str]:
    if "=" not in spec:
        raise InputError(f"judge must look like NAME=PATH, got {spec!r}")
    name, path = spec.split("=", 1)
    return name.strip(), path.strip()


def run_agreement(
    human: str,
    human_format: str = "pandalm",
    runs: list[str] | None = None,
    judges: list[str] | None = None,
    out_dir: str = "runs/agreement",
    human_limit: int | None = None,
    human_seed: int = 0,
    human_id_column: str = "pair_id",
    human_label_column: str = "label",
    title: str = "AI vs human agreement",
) -> dict:
    """Compare any number of judges (pipeline runs NAME=RUN_DIR, verdict files NAME=FILE) with human labels."""
    humans_list = load_human(human_format, human, human_limit, human_seed, human_id_column, human_label_column)
    humans = {h["pair_id"]: h for h in humans_list}
    missing = sum(1 for h in humans_list if h.get("human") is None)
    if missing:
        print(f"{missing} human items have no readable label and are excluded")
        humans = {k: v for k, v in humans.items() if v.get("human") is not None}
    all_judges = [judge_from_run(*_split(s)) for s in runs or []] + [judge_from_file(*_split(s)) for s in judges or []]
    if not all_judges:
        raise InputError("no judges given: pass --run NAME=RUN_DIR (a labelled run) and/or --judge NAME=FILE (a verdict file)")
    results = []
    for j in all_judges:
        r = evaluate(j, humans)
        jn = r["join"]
        print(f"{j.name}: joined {jn['joined']} of {jn['judge_items']} judge items / {jn['human_items']} human items; agreement {r['agreement']:.3f}, kappa {r['kappa']:.3f}")
        results.append(r)
    ceiling = human_ceiling(humans)
    paths = write_report(Path(out_dir), title, results, ceiling, {"human": f"{human_format}: {human}", "n_human_items": len(humans)})
    # per-item human labels, for `aifeedback view` (sort by disagreement with the human label)
    paths["human_labels"] = Path(out_dir) / "human_labels.json"
    paths["human_labels"].write_text(json.dumps({"human": f"{human_format}: {human}", "labels": {k: v["human"] for k, v in humans.items()}}, indent=0))
    return {k: str(v) for k, v in paths.items()} | {"agreement": {r["judge"]: r["agreement"] for r in results}}
