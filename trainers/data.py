"""Training data from label runs, joined with human labels for held-out evaluation."""

from __future__ import annotations

import random


def split_with_humans(rows: list[dict], humans: dict[str, dict] | None, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split: a share of the pairs that have a non-tie human label is held out (with that label); the rest trains."""
    rows = [dict(r, human=(humans or {}).get(r["pair_id"], {}).get("human")) for r in rows]
    labelled = sorted(r["pair_id"] for r in rows if r["human"] in ("A", "B"))
    random.Random(seed).shuffle(labelled)
    held = set(labelled[: int(round(len(labelled) * eval_fraction))])
    return [r for r in rows if r["pair_id"] not in held], [r for r in rows if r["pair_id"] in held]


def rows_from_verdicts(pairs: list[dict], verdicts: dict[str, str]) -> list[dict]:
    """Label rows from another judge's hard verdicts (A/B; ties and missing verdicts dropped)."""
    out = []
    for p in pairs:
        v = verdicts.get(p["pair_id"])
        if v in ("A", "B") and isinstance(p["response_a"], str) and isinstance(p["response_b"], str):
            out.append({**p, "p_a": 1.0 if v == "A" else 0.0, "hard_label": v, "confidence": 1.0, "consistent": None})
    return out
