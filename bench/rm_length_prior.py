"""How far a length prior moves a reward model against prefer-the-longer, out of domain (#29).

A reward model's pair margin m = r_A - r_B, divided by its standard deviation on the gold slice, plus beta times
the side of the longer answer (+1 when A is longer, -1 when B is, 0 when equal): beta = 0 is the model alone, a
large beta is prefer-the-longer with the model breaking ties. For each beta, every set's accuracy and its accuracy
on the pairs where humans preferred the shorter answer, which is the trade-off the #29 targets ask about (beat
prefer-longer overall and >= 55% on those pairs). The beta that the gold slice chooses is marked; the test sets
never choose.

- --labelers: reward models of bench/rm_alpaca_eval.py, reported on its sets (PandaLM human majority less the gold
  slice, LLMBar Natural, hh-rlhf harmless); gold: its 88 PandaLM items. --ensemble adds the models' normalised
  margins summed.
- --evaluators: reward models of bench/rm_human_evaluators.py, reported on its sets; gold: both sources' gold slices.

Usage: .venv/bin/python bench/rm_length_prior.py --labelers runs/ae-rms3/none,runs/ae-rms3/residual6 --ensemble
       --evaluators runs/human-evals-both/both --out runs/length-prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

BETAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def margins(model: str, sets: dict[str, list[dict]], max_length: int) -> dict[str, list[float]]:
    from labelers.rm_labeler import RewardModelScorer

    scorer = RewardModelScorer(model, max_length=max_length, device="cpu")
    out = {}
    for name, rows in sets.items():
        r_a, r_b = scorer.pair_rewards(rows)
        out[name] = [a - b for a, b in zip(r_a, r_b)]
    return out


def _sd(xs: list[float]) -> float:
    mu = sum(xs) / len(xs)
    return (sum((x - mu) ** 2 for x in xs) / len(xs)) ** 0.5 or 1.0


def sweep(name: str, m: dict[str, list[float]], sets: dict[str, list[dict]]) -> list[dict]:
    """Accuracy by beta on every set (trainers.loop.evaluators.set_accuracy of the prior-shifted margin, with
    rm_alpaca_eval.shorter_won); m holds the margins by set, 'gold' among them."""
    from rm_alpaca_eval import shorter_won

    from trainers.loop.evaluators import set_accuracy
    from trainers.reward_trainer import longer_side

    scale = _sd(m["gold"])
    sides = {k: [{"A": 1, "B": -1, None: 0}[longer_side(r)] for r in rows] for k, rows in sets.items()}
    rows_out = []
    for beta in BETAS:
        row = {"model": name, "beta": beta}
        for set_name, rows in sets.items():
            score = [mi / scale + beta * s for mi, s in zip(m[set_name], sides[set_name])]
            acc = set_accuracy(set_name, rows, score, [0.0] * len(rows), in_domain=False)
            hits = [(x > 0) == (r["human"] == "A") for x, r in zip(score, rows)]
            row[set_name] = {"n": acc.n, "accuracy": acc.accuracy, "vs_prefer_longer_ci": acc.vs_prefer_longer_ci, "prefer_longer": acc.prefer_longer, "equal_length": sides[set_name].count(0)}
            row[set_name]["accuracy_shorter_preferred"] = shorter_won(rows, hits)["accuracy_shorter_preferred"]
        rows_out.append(row)
    best = max(rows_out, key=lambda r: (r["gold"]["accuracy"], -r["beta"]))
    best["chosen_by_gold"] = True
    return rows_out


def print_rows(rows: list[dict]) -> None:
    sets = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    print("| model | beta | " + " | ".join(f"{s}: acc / shorter-preferred (prefer-longer; 95% CI of the difference)" for s in sets) + " |")
    for r in rows:
        cells = [f"{r[s]['accuracy']:.1%} / {r[s]['accuracy_shorter_preferred'] or 0:.1%} ({r[s]['prefer_longer']:.1%}; {100 * r[s]['vs_prefer_longer_ci'][0]:+.1f}, {100 * r[s]['vs_prefer_longer_ci'][1]:+.1f})" for s in sets]
        print(f"| {r['model']} | {r['beta']}{' (gold)' if r.get('chosen_by_gold') else ''} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labelers", default="", help="comma-separated reward model folders of bench/rm_alpaca_eval.py")
    ap.add_argument("--ensemble", action="store_true", help="also the labelers' normalised margins summed")
    ap.add_argument("--evaluators", default="", help="comma-separated reward model folders of bench/rm_human_evaluators.py")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--hh", type=int, default=500)
    ap.add_argument("--out", default="runs/length-prior.json")
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    result = {"betas": list(BETAS), "labelers": [], "evaluators": []}
    labelers = [p for p in args.labelers.split(",") if p]
    if labelers:
        from rm_alpaca_eval import eval_sets

        sets, gold = eval_sets(args.hh)
        sets = {k: [r for r in v if r["human"] in ("A", "B")] for k, v in {**sets, "gold": gold}.items()}
        all_m = {p: margins(p, sets, args.max_length) for p in labelers}
        for p, m in all_m.items():
            result["labelers"] += sweep(p, m, sets)
        if args.ensemble and len(labelers) > 1:
            scale = {p: _sd(all_m[p]["gold"]) for p in labelers}
            ens = {k: [sum(v) for v in zip(*([x / scale[p] for x in all_m[p][k]] for p in labelers))] for k in sets}
            result["labelers"] += sweep("+".join(Path(p).name for p in labelers), ens, sets)
        print_rows(result["labelers"])
    evaluators = [p for p in args.evaluators.split(",") if p]
    if evaluators:
        from rm_human_evaluators import human_sets

        _, gold, report = human_sets(args.hh, 200, 0)
        sets = {k: [r for r in v if r["human"] in ("A", "B")] for k, v in {**report, "gold": gold["pandalm"] + gold["hh"]}.items()}
        for p in evaluators:
            result["evaluators"] += sweep(p, margins(p, sets, args.max_length), sets)
        print_rows(result["evaluators"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
