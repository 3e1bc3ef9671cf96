"""RLAIF paper's reward-model comparison on PandaLM: AI labels (GPT-3.5 verdicts) vs human labels (majority of 3).

The MiniLM reward model is trained once with each label source on the same seeded
training split (ties excluded) and evaluated on the same held-out pairs against
the human majority. Usage: .venv/bin/python bench/rm_pandalm.py [--epochs 1] [--max-length 128]

Last run (epochs 1, max-length 128, seed 0; 676 train / 168 held out): RM on GPT-3.5
labels 70.2%, RM on human labels 78.0% held-out human accuracy; baselines:
prefer-longer 72.6%, GPT-3.5's own verdicts 83.3%. 8 + 13 min on one thread.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pandalm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()

    from labelers.agreement import judge_from_file
    from labelers.human_data import pandalm_items
    from trainers.data import rows_from_verdicts
    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    items = [p for p in pandalm_items(DATA / "testset-v1.json") if p["human"] in ("A", "B") and isinstance(p["response_a"], str) and isinstance(p["response_b"], str)]
    gpt = judge_from_file("gpt35", str(DATA / "gpt-3.5-turbo-testset-v1.json")).verdicts
    items = [p for p in items if gpt.get(p["pair_id"]) in ("A", "B")]
    ids = sorted(p["pair_id"] for p in items)
    random.Random(args.seed).shuffle(ids)
    held = set(ids[: int(len(ids) * args.eval_fraction)])
    train_items = [p for p in items if p["pair_id"] not in held]
    eval_rows = [p for p in items if p["pair_id"] in held]
    ai_rows = rows_from_verdicts(train_items, gpt)
    human_rows = rows_from_verdicts(train_items, {p["pair_id"]: p["human"] for p in train_items})
    agree = sum(a["hard_label"] == h["hard_label"] for a, h in zip(ai_rows, human_rows)) / len(ai_rows)
    print(f"{len(items)} PandaLM pairs with non-tie human majority and GPT-3.5 verdict; train {len(train_items)}, held out {len(eval_rows)} (seed {args.seed}); GPT-3.5 agrees with humans on {agree:.1%} of the training pairs")
    longer = sum(("A" if len(p["response_a"]) > len(p["response_b"]) else "B") == p["human"] for p in eval_rows) / len(eval_rows)
    gpt_eval = sum(gpt[p["pair_id"]] == p["human"] for p in eval_rows) / len(eval_rows)
    print(f"held-out baselines: prefer-the-longer-response {longer:.1%}; GPT-3.5's own verdicts {gpt_eval:.1%}")
    results = {"baselines": {"prefer_longer": longer, "gpt35_verdicts": gpt_eval}}
    for name, rows in (("AI labels (GPT-3.5)", ai_rows), ("human labels (majority)", human_rows)):
        cfg = RewardConfig(labels="soft", epochs=args.epochs, seed=args.seed, max_length=args.max_length, batch_size=16, lr=3e-5)
        tr = RewardTrainer(cfg)
        res = tr.train(rows, eval_rows)
        results[name] = {"held_out_human_accuracy": res.eval_accuracy, "n_train": res.n_train, "n_eval": res.n_eval, "steps": len(res.losses), "first_loss": res.losses[0], "last_loss": sum(res.losses[-5:]) / 5, "seconds": res.seconds}
        print(f"| {name} | {res.eval_accuracy:.1%} | {res.n_train} | {res.n_eval} | {res.seconds:.0f} s |", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
