"""Labelling modes side by side on the same human-labelled pairs (hh-rlhf harmless-base by default).

For each mode: agreement with the human choice, position consistency, how often
the first-shown position won both orders, and pairs/s. Usage:
    .venv/bin/python bench/label_modes.py --pairs 300 --modes pairwise-both,pairwise-single
    .venv/bin/python bench/label_modes.py --pairs 60            # every mode
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCES = {"hh": DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "pandalm": DATA / "pandalm" / "testset-v1.json", "llmbar": DATA / "llmbar-natural" / "dataset.json"}

MODES = {
    "pairwise-both": {},
    "pairwise-single": {"orders": "single"},
    "pairwise-both-calibrated": {"calibrate": True},
    "pairwise-both-fewshot": {"few_shot": True},
    "pairwise-both-fewshot-calibrated": {"few_shot": True, "calibrate": True},
    "pairwise-both-ensemble3-calibrated": {"constitution": "harmless", "principles": "ensemble", "k_principles": 3, "calibrate": True},
    "pointwise": {"method": "pointwise"},
    "pointwise-calibrated": {"method": "pointwise", "calibrate": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=sorted(SOURCES), default="hh")
    args = ap.parse_args()
    src = SOURCES[args.data]
    if not src.is_file():
        raise SystemExit(f"needs {src} (the shared human-preference data)")

    from aifeedback.config import LabelConfig
    from aifeedback.constitution import load_constitution
    from aifeedback.stage import cached_backend
    from labelers.human_data import load_human
    from labelers.labeler import Labeler
    from labelers.templates import load_template

    items = load_human(args.data, src, args.pairs, args.seed)
    pairs = [p for p in items if p["human"] in ("A", "B") and isinstance(p["response_a"], str) and isinstance(p["response_b"], str)]
    human = {p["pair_id"]: p["human"] for p in pairs}
    print(f"{len(pairs)} {args.data} pairs with a non-tie human label (from the first {args.pairs}){', A/B randomised with seed ' + str(args.seed) if args.data == 'hh' else ''}")
    print("| mode | agreement | consistency | first position won both orders | pairs/s | labelled + excluded |")
    print("|---|---|---|---|---|---|")
    for name in args.modes.split(","):
        cfg = LabelConfig(seed=args.seed, **MODES[name])
        con = load_constitution(cfg.constitution)[0] if cfg.constitution else None
        lab = Labeler(cached_backend(cfg.backend), cfg, load_template(cfg.template or cfg.method), con)
        t0 = time.perf_counter()
        rows, excluded = lab.label(pairs, "bench", cfg.backend.model, None)
        dt = time.perf_counter() - t0
        decided = [r for r in rows if r["p_a"] != 0.5]
        agree = sum((r["p_a"] > 0.5) == (human[r["pair_id"]] == "A") for r in decided) / max(1, len(decided))
        both = [r for r in rows if r["consistent"] is not None]
        cons = f"{sum(r['consistent'] for r in both) / len(both):.1%}" if both else "n/a"
        first = f"{sum(r['position_preferred'] == 'first' for r in both) / len(both):.1%}" if both else "n/a"
        print(f"| {name} | {agree:.1%} | {cons} | {first} | {len(rows) / dt:.2f} | {len(rows)} + {len(excluded)} |", flush=True)


if __name__ == "__main__":
    main()
