"""AI-vs-human agreement: join judges to human labels and compute every metric of the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aifeedback.errors import InputError

from .human_data import normalise_verdict
from .metrics import accuracy, bootstrap_ci, coverage_curve, cohen_kappa, cv_temperature, ece, pairwise_human_agreement, position_stats, prefers_longer


@dataclass
class Judge:
    name: str
    verdicts: dict[str, str]  # pair_id -> "A"/"B"/"tie"
    probs: dict[str, float] = field(default_factory=dict)  # pair_id -> P(A > B), when the judge has them
    rows: dict[str, dict] = field(default_factory=dict)  # full label rows (pipeline judges)
    description: str = ""


def judge_from_run(name: str, run_dir: str) -> Judge:
    from aifeedback.store import RunStore

    store = RunStore(run_dir)
    rows = store.read_table("labels").to_pylist()
    if not rows:
        raise InputError(f"run {run_dir} has no label rows; run `aifeedback label --run-dir {run_dir}` first")
    modes = sorted({r["mode"] for r in rows})
    # the verdict is the label's hard label (aifeedback.preference.winner, with the run's tie margin), as in exports
    return Judge(
        name,
        {r["pair_id"]: r["hard_label"] for r in rows},
        {r["pair_id"]: r["p_a"] for r in rows},
        {r["pair_id"]: r for r in rows},
        f"{rows[0]['labeler_model']} via {rows[0]['backend']}, mode {', '.join(modes)}, template {rows[0]['template_version']}",
    )


def judge_from_file(name: str, path: str, id_prefix: str = "", id_column: str | None = None, label_column: str | None = None) -> Judge:
    """A verdict file: PandaLM-style (idx + *_result) is detected; otherwise name the columns."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"judge file {p} does not exist")
    from aifeedback.io import iter_rows

    rows = list(iter_rows(p))  # JSON lists and JSONL/CSV/Parquet alike; an unreadable file is an InputError
    data = [r for r in rows if isinstance(r, dict)]
    if not data:
        raise InputError(f"judge file {p} holds no readable rows" + (f" ({rows[0][1]})" if rows else "") + "; pass a JSON list, JSONL, CSV or Parquet file of verdicts")
    first = data[0]
    id_col = id_column or ("idx" if "idx" in first else "pair_id")
    lab_col = label_column or next((k for k in first if k.endswith("_result")), None) or "label"
    if id_col not in first or lab_col not in first:
        raise InputError(f"judge file {p}: no id column {id_col!r} or verdict column {lab_col!r}. Available columns: {sorted(first)}. Name the id column pair_id (or idx) and the verdict column label (or NAME_result).")
    prefix = id_prefix or ("pandalm-" if id_col == "idx" else "")
    verdicts, unknown = {}, len(rows) - len(data)  # rows that are not objects count as unreadable
    for r in data:
        v = normalise_verdict(r.get(lab_col))
        if v is None or r.get(id_col) is None:
            unknown += 1
            continue
        verdicts[f"{prefix}{r[id_col]}"] = v
    if not verdicts:
        raise InputError(
            f"judge file {p}: none of its {len(rows)} verdicts in column {lab_col!r} is readable (A/B/tie, 1/2/0 or response_a/response_b, "
            f"e.g. got {first.get(lab_col)!r}). Put the verdicts in a column named label (or NAME_result)."
        )
    desc = f"verdicts from {p.name} (column {lab_col})" + (f"; {unknown} unreadable verdicts skipped and counted" if unknown else "")
    j = Judge(name, verdicts, description=desc)
    j.unreadable = unknown  # type: ignore[attr-defined]
    return j


def join_humans(judge: Judge, humans: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """The judge's verdicts joined to the human labels, one row per shared pair id (sorted), and the join's counts."""
    j = pd.DataFrame({"pair_id": list(judge.verdicts), "_verdict": list(judge.verdicts.values())})
    h = pd.DataFrame([{**row, "pair_id": pid} for pid, row in humans.items()], columns=None if humans else ["pair_id"])
    both = j.merge(h, on="pair_id", how="outer", indicator=True)
    side = both["_merge"].value_counts()
    join = {"judge_items": len(j), "human_items": len(h), "joined": int(side.get("both", 0)), "judge_only": int(side.get("left_only", 0)), "human_only": int(side.get("right_only", 0))}
    return both[both["_merge"] == "both"].drop(columns="_merge").sort_values("pair_id", ignore_index=True), join


def _text_len(df: pd.DataFrame, col: str) -> list[int]:
    if col not in df:
        return [0] * len(df)
    return df[col].fillna("").astype(str).str.len().tolist()


def evaluate(judge: Judge, humans: dict[str, dict], n_boot: int = 2000) -> dict:
    """All metrics for one judge against the human labels (items with a human tie are excluded from accuracy)."""
    joined, join = join_humans(judge, humans)
    if joined.empty:
        ids_j, ids_h = sorted(judge.verdicts), sorted(humans)
        raise InputError(
            f"judge {judge.name!r} shares no pair ids with the human labels ({len(ids_j)} judge ids such as {ids_j[:3]}, "
            f"{len(ids_h)} human ids such as {ids_h[:3]}). Label the same pairs (`aifeedback import-pairs` keeps their ids), or write the human labels' ids into the judge file's pair_id column."
        )
    decided = joined[joined["human"].isin(["A", "B"])]
    pred, gold = decided["_verdict"].tolist(), decided["human"].tolist()
    acc = accuracy(pred, gold)
    lo, hi = bootstrap_ci(pred, gold, n_boot)
    out: dict = {
        "judge": judge.name,
        "description": judge.description,
        "join": join,
        "n_decided": len(decided),
        "n_human_ties_excluded": len(joined) - len(decided),
        "agreement": acc,
        "agreement_ci95": [lo, hi],
        "kappa": cohen_kappa(pred, gold),
        "judge_tie_rate": sum(p == "tie" for p in pred) / max(1, len(pred)),
    }
    la, lb = _text_len(decided, "response_a"), _text_len(decided, "response_b")
    if any(la) or any(lb):
        out["prefers_longer_ai"] = prefers_longer(pred, la, lb)
        out["prefers_longer_human"] = prefers_longer(gold, la, lb)
    if judge.rows:
        out["position"] = position_stats([judge.rows[i] for i in joined["pair_id"]])
    if judge.probs:
        probs = [judge.probs[i] for i in decided["pair_id"]]
        outcomes = [1 if g == "A" else 0 for g in gold]
        e, bins = ece(probs, outcomes)
        ts = cv_temperature(probs, outcomes) if len(probs) >= 10 else None
        out["ece"] = e
        out["reliability"] = bins
        if ts:
            out["temperature_scaling"] = {k: v for k, v in ts.items() if k != "bins_after"}
            out["reliability_after"] = ts["bins_after"]
        out["coverage"] = coverage_curve(probs, pred, gold)
    # a pair's category: its category, else its source, else "all" (empty values fall through)
    category = pd.Series("all", index=decided.index)
    for col in ("source", "category"):
        if col in decided:
            category = decided[col].where(decided[col].notna() & (decided[col].astype(str) != ""), category).astype(str)
    by = decided.assign(category=category, hit=decided["_verdict"] == decided["human"]).groupby("category")["hit"].agg(n="size", agreement="mean")
    if len(by) > 1:
        by = by.reset_index().sort_values(["n", "category"], ascending=[False, True]).head(15)
        out["by_category"] = {r.category: {"n": int(r.n), "agreement": float(r.agreement)} for r in by.itertuples()}
    return out


def human_ceiling(humans: dict[str, dict]) -> dict | None:
    ann = [h["annotators"] for h in humans.values() if h.get("annotators")]
    if not ann:
        return None
    # each annotator against the majority of the others is not defined for 3; report pairwise agreement
    return {"n_items": len(ann), "annotators_per_item": len(ann[0]), "pairwise_agreement": pairwise_human_agreement(ann)}


DEFINITIONS = {
    "agreement": "Share of items with a non-tie human label where the judge's verdict equals it (a judge tie counts as a miss). For labelers from this pipeline the verdict is the label's hard label: the side p(A>B) favours, or a tie within the run's tie_margin (the same definition export and training use; `--set tie_margin=0` gives the RLAIF paper's argmax); verdict files give theirs. 95% CI: percentile bootstrap over items.",
    "kappa": "Cohen's kappa between judge and human labels on the same items: (p_o - p_e) / (1 - p_e), with p_e from each side's label frequencies.",
    "human ceiling": "Mean agreement between pairs of human annotators of the same item (all three pairs for PandaLM).",
    "consistency": "Share of pairs whose two orders pick the same winner.",
    "same position preferred": "Share of pairs where one position won in both orders (the inverse of consistency).",
    "first position preference": "Share of single orders in which the first-shown response won.",
    "prefers longer": "P(the preferred response is the longer one, in characters), over decided pairs of unequal length; for the judge and for the humans.",
    "ECE": "Expected calibration error over 10 confidence bins: sum over bins of (bin share) x |accuracy - mean confidence|, with confidence max(p, 1-p).",
    "temperature scaling": "T minimising the log-loss of sigmoid(logit(p)/T); ECE after is measured with T fitted on the other 4 of 5 folds (cross-validated). The full-data T is saved and can be applied with `aifeedback label --set temperature=T`.",
    "coverage": "Agreement on the most confident fraction of items when the judge abstains below a confidence.",
}
