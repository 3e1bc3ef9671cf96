"""A judge's verdicts, made elsewhere (a hosted LLM, PandaLM-7B, people), as label rows of a run.

The verdict file holds pair ids plus a hard verdict (A/B/tie, 1/2/0, response_a/response_b)
or a probability P(A > B). PandaLM-style files (``idx`` + ``NAME_result``) are detected;
any other table names its columns. Each verdict becomes a label row like the labeler's
(LABEL_OUTPUTS): ``option_probs`` holds P(A better) for the single order the judge saw
(AB), ``prob_source`` says "imported:verdict" or "imported:probability", and
``labeler_model`` / ``backend`` carry the judge's name and "imported". Training,
agreement and export then read them like any labelled run.

Pairs with no verdict become exclusion rows ("no_verdict"); verdicts whose id matches no
pair, and unreadable verdicts, are counted in the summary; when no id matches at all it
is an error that shows ids from both sides.

AlpacaEval annotations bring their own pairs (labelers/alpaca_eval.py) and run through
the same :class:`ImportJob`, their derived pairs marked ``prob_source`` "derived:bradley_terry".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aifeedback.errors import InputError
from aifeedback.records import LABEL_OUTPUTS, exclusion, split_labelable
from aifeedback.batches import Excluded
from aifeedback.preference import Derivation

from .human_data import normalise_verdict


def read_verdicts(path: str, id_column: str | None = None, label_column: str | None = None, prob_column: str | None = None, id_prefix: str = "") -> tuple[dict[str, dict], dict]:
    """pair id -> {"p_a", "source", "raw"}; and counts {rows, unreadable}.

    ``prob_column``: P(A > B) in [0, 1] (a soft label); else ``label_column``: a hard verdict.
    """
    from aifeedback.io import iter_rows

    p = Path(path)
    if not p.is_file():
        raise InputError(f"verdict file {p} does not exist; pass the judge's verdicts (JSON list, JSONL, CSV or Parquet)")
    rows = list(iter_rows(p))
    data = [r for r in rows if isinstance(r, dict)]
    if not data:
        raise InputError(f"verdict file {p} holds no readable rows; pass a JSON list, JSONL, CSV or Parquet file with an id and a verdict per pair")
    first = data[0]
    id_col = id_column or ("idx" if "idx" in first else "pair_id")
    lab_col = None if prob_column else (label_column or next((k for k in first if k.endswith("_result")), None) or "label")
    need = [c for c in (id_col, prob_column or lab_col) if c not in first]
    if need:
        raise InputError(f"verdict file {p}: no column(s) {need}. Available columns: {sorted(first)}. Pass --id-column and --label-column (a verdict) or --prob-column (P(A > B)).")
    prefix = id_prefix or ("pandalm-" if id_col == "idx" and not id_column else "")
    out: dict[str, dict] = {}
    unreadable = len(rows) - len(data)
    duplicate = 0
    for r in data:
        rid = r.get(id_col)
        if rid is None:
            unreadable += 1
            continue
        if prob_column:
            try:
                pa = float(r.get(prob_column))
            except (TypeError, ValueError):
                pa = None
            if pa is None or not 0.0 <= pa <= 1.0:
                unreadable += 1
                continue
            src = "imported:probability"
        else:
            v = normalise_verdict(r.get(lab_col))
            if v is None:
                unreadable += 1
                continue
            pa = {"A": 1.0, "B": 0.0, "tie": 0.5}[v]
            src = "imported:verdict"
        key = f"{prefix}{rid}"
        if key in out:
            duplicate += 1
            continue
        out[key] = {"p_a": pa, "source": src, "raw": json.dumps(r, default=str, ensure_ascii=False)[:2000]}
    if not out:
        col = prob_column or lab_col
        raise InputError(f"verdict file {p}: none of its {len(rows)} rows has a readable {'probability in [0, 1]' if prob_column else 'verdict (A/B/tie, 1/2/0, response_a/response_b)'} in column {col!r} (e.g. got {first.get(col)!r})")
    return out, {"rows": len(rows), "unreadable": unreadable, "duplicate_ids": duplicate, "column": prob_column or lab_col, "id_column": id_col, "id_prefix": prefix}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def join_pairs(pairs, verdicts: dict[str, dict], source: str):
    """Pairs (and input exclusions) -> items carrying their verdict, or Excluded("no_verdict"); counts the ids matched."""
    matched = 0
    seen_ids: list[str] = []
    for it in pairs:
        if isinstance(it, Excluded):
            yield it
            continue
        if len(seen_ids) < 3:
            seen_ids.append(it["pair_id"])
        v = verdicts.get(it["pair_id"])
        if v is None:
            yield Excluded(exclusion(it["pair_id"], "labels", "no_verdict", f"{source} has no verdict for pair {it['pair_id']}"))
            continue
        matched += 1
        yield {**it, "verdict": v}
    join_pairs.last = {"matched": matched, "example_pair_ids": seen_ids}  # type: ignore[attr-defined]


def check_overlap(pair_ids: list[str], verdicts: dict[str, dict], source: str) -> int:
    n = len(set(pair_ids) & set(verdicts))
    if n == 0:
        raise InputError(
            f"none of the {len(verdicts)} verdict ids in {source} matches a pair of the run (verdict ids look like {sorted(verdicts)[:3]}, pair ids like {pair_ids[:3]}); "
            "pass --id-prefix (PandaLM files get 'pandalm-'), --id-column, or the pairs the judge saw with --input"
        )
    return n


@dataclass
class ImportJob:
    """The label stage's job for imported verdicts: no model, one row per verdict."""

    judge: str
    source: str
    digest: str
    column: str
    stage: str = "labels"
    schema = LABEL_OUTPUTS
    tie_margin: float = 0.05
    extra: dict = field(default_factory=dict)

    def item_id(self, item: dict) -> str:
        return item["pair_id"]

    def key_config(self) -> dict:
        return {"labeler": "imported", "judge": self.judge, "file_digest": self.digest, "column": self.column}

    def derivation(self) -> Derivation:
        return Derivation(tie_margin=self.tie_margin)

    def model_id(self) -> str:
        return self.judge

    def template_version(self) -> str:
        return f"imported:{Path(self.source).name}@{self.digest}"

    def manifest_info(self) -> dict:
        return {"labeler": "imported", "judge": self.judge, "verdict_file": str(Path(self.source).resolve()), "file_digest": self.digest, "column": self.column, **self.extra}

    def compute(self, items: list[dict], key: str) -> tuple[list[dict], list[dict], dict]:
        from aifeedback.config import config_hash

        chash = config_hash(self.key_config())
        good, excluded = split_labelable(items, "labels", key)
        rows = []
        for it in good:
            v = it["verdict"]
            pa = float(v["p_a"])
            rows.append(
                {
                    "pair_id": it["pair_id"],
                    "prompt_id": it["prompt_id"],
                    "messages": it["messages"],
                    "response_a": it["response_a"],
                    "response_b": it["response_b"],
                    "mode": "imported",
                    "option_probs": [{"order": "AB", "principle_id": None, "probs": [pa, 1 - pa]}],
                    "candidates": ["1", "2"],
                    "orders": ["AB"],
                    "principle_ids": [],
                    "rationale": None,
                    "prob_source": v["source"],
                    "retries": 0,
                    "injection_flags": [],
                    "truncated": False,
                    "raw": v["raw"],
                    "labeler_model": self.judge,
                    "backend": "imported",
                    "template": "imported",
                    "template_version": self.template_version(),
                    "constitution_id": None,
                    "constitution_version": None,
                    "seed": 0,
                    "config_hash": chash,
                    "batch_key": key,
                    "__item__": it["pair_id"],
                }
            )
        return rows, excluded, {"model_calls": 0}
