"""The loop's two reward models on PandaLM: a labeler (AI verdicts) and an independent evaluator (human labels).

Seeded split of the PandaLM test set by pair id (items whose two responses are text):
- held out (20% of the items with a non-tie human majority): both RMs' accuracy is measured here;
- gold (10% of them): early stopping, and the labeler's temperature T;
- evaluator items (half of the remaining human-labelled items): the evaluator RM trains on their human majority;
- labeler items (every other item, human ties included): the labeler RM trains on AI verdicts, soft labels
  when several sources are given (the mean of their votes, tie = 0.5).
The two RMs' training items are disjoint. Each is reported on held-out PandaLM, on LLMBar Natural, and on the
subset of each where the human-preferred response is the shorter one, against prefer-the-longer.

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/rm_loop_models.py --out runs/loop-rms [--epochs 3] [--which labeler,evaluator]
       [--sources gpt35,pandalm7b] [--length-weight 0.1] [--lr 3e-5] [--no-odin] [--no-balance]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def splits(seed: int = 0, held_fraction: float = 0.2, gold_fraction: float = 0.1) -> dict:
    from labelers.human_data import pandalm_items

    items = [p for p in pandalm_items(DATA / "pandalm" / "testset-v1.json") if isinstance(p["response_a"], str) and isinstance(p["response_b"], str)]
    human = sorted(p["pair_id"] for p in items if p["human"] in ("A", "B"))
    random.Random(seed).shuffle(human)
    n_h, n_g = int(len(human) * held_fraction), int(len(human) * gold_fraction)
    held, gold, rest = set(human[:n_h]), set(human[n_h : n_h + n_g]), human[n_h + n_g :]
    evaluator = set(rest[: len(rest) // 2])
    by = {p["pair_id"]: p for p in items}
    return {
        "held": [by[i] for i in sorted(held)],
        "gold": [by[i] for i in sorted(gold)],
        "evaluator": [by[i] for i in sorted(evaluator)],
        "labeler": [p for p in items if p["pair_id"] not in held | gold | evaluator],
    }


def verdict_rows(items: list[dict], sources: list[str]) -> list[dict]:
    """Soft AI labels: P(A > B) = mean over sources of 1 (A), 0 (B), 0.5 (tie); items no source judged are dropped."""
    from labelers.agreement import judge_from_file

    files = {"gpt35": "gpt-3.5-turbo-testset-v1.json", "pandalm7b": "pandalm-7b-testset-v1.json"}
    verdicts = [judge_from_file(s, str(DATA / "pandalm" / files[s])).verdicts for s in sources]
    out = []
    for p in items:
        votes = [{"A": 1.0, "B": 0.0, "tie": 0.5}[v[p["pair_id"]]] for v in verdicts if v.get(p["pair_id"]) in ("A", "B", "tie")]
        if votes and sum(votes) / len(votes) != 0.5:
            pa = sum(votes) / len(votes)
            out.append({**p, "p_a": pa, "hard_label": "A" if pa > 0.5 else "B", "confidence": abs(2 * pa - 1), "consistent": None})
    return out


def write_gold(items: list[dict], dest: Path) -> None:
    """The gold slice as the loop's --gold file (messages, response_a, response_b, human): the labeler's temperature is fitted on it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w") as fh:
        fh.writelines(json.dumps({k: p[k] for k in ("pair_id", "messages", "response_a", "response_b", "human")}) + "\n" for p in items)


def human_rows(items: list[dict]) -> list[dict]:
    return [{**p, "p_a": 1.0 if p["human"] == "A" else 0.0, "hard_label": p["human"], "confidence": 1.0, "consistent": None} for p in items if p["human"] in ("A", "B")]


def report(trainer, name: str, sets: dict[str, list[dict]]) -> dict:
    from trainers.reward_trainer import longer_side

    out = {}
    for set_name, rows in sets.items():
        rows = [r for r in rows if r["human"] in ("A", "B")]
        shorter = [r for r in rows if longer_side(r) not in (None, r["human"])]
        longer = sum(longer_side(r) == r["human"] for r in rows) / len(rows)
        out[set_name] = {"n": len(rows), "rm": trainer.accuracy(rows), "prefer_longer": longer, "n_shorter_preferred": len(shorter), "rm_on_shorter_preferred": trainer.accuracy(shorter) if shorter else None}
        o = out[set_name]
        print(f"| {name} | {set_name} | {o['n']} | {o['rm']:.1%} | {o['prefer_longer']:.1%} | {o['n_shorter_preferred']} | {o['rm_on_shorter_preferred']:.1%} |", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/loop-rms")
    ap.add_argument("--which", default="labeler,evaluator")
    ap.add_argument("--sources", default="gpt35", help="AI verdict sources of the labeler: gpt35, pandalm7b or both (comma-separated)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--no-odin", action="store_true")
    ap.add_argument("--length-weight", type=float, default=1.0, help="ODIN: weight of the length-correlation terms (RewardConfig.length_weight)")
    ap.add_argument("--no-balance", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from labelers.human_data import llmbar_items
    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    torch.set_num_threads(2)
    sp = splits(args.seed)
    write_gold(sp["gold"], Path(args.out) / "gold.jsonl")
    llmbar = llmbar_items(DATA / "llmbar-natural" / "dataset.json")
    sets = {"pandalm_held_out": sp["held"], "llmbar_natural": llmbar}
    print({k: len(v) for k, v in sp.items()}, "items (labeler items include human ties)")
    print("| RM | set | n | RM acc | prefer-longer | n shorter-preferred | RM acc there |\n|---|---|---|---|---|---|---|")
    results = {"split": {k: len(v) for k, v in sp.items()}, "args": vars(args)}
    for which in args.which.split(","):
        rows = verdict_rows(sp["labeler"], args.sources.split(",")) if which == "labeler" else human_rows(sp["evaluator"])
        cfg = RewardConfig(labels="soft", epochs=args.epochs, seed=args.seed, max_length=args.max_length, batch_size=16, lr=args.lr, length_head=not args.no_odin, length_weight=args.length_weight, length_balance=not args.no_balance, early_stopping=True)
        t0 = time.perf_counter()
        tr = RewardTrainer(cfg)
        res = tr.train(rows, sp["held"], gold_rows=sp["gold"])
        out = Path(args.out) / which
        tr.save(out, res, {"bench": "bench/rm_loop_models.py", "which": which, "sources": args.sources if which == "labeler" else "human majority", "split_seed": args.seed, "train_pair_ids": sorted(r["pair_id"] for r in rows)})
        name = f"{which} ({args.sources if which == 'labeler' else 'human'})"
        results[which] = {"n_train": res.n_train, "gold_curve": res.gold_curve, "best_epoch": res.best_epoch, "seconds": time.perf_counter() - t0, "first_loss": res.losses[0], "last_loss": sum(res.losses[-5:]) / 5, "sets": report(tr, name, sets), "dir": str(out)}
        print(f"{name}: {res.n_train} pairs, gold accuracy per epoch {[round(a, 3) for a in res.gold_curve]}, best epoch {res.best_epoch}, {time.perf_counter() - t0:.0f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"bench_{args.which.replace(',', '_')}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
