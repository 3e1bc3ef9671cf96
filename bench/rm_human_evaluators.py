"""Loop evaluators trained on human labels from sources other than the labeler's AI labels (#29).

Sources (each a MiniLM reward model, soft labels 1/0 from the human choice):
- pandalm: PandaLM's human majority, every item of bench/rm_loop_models.splits except its held-out and gold
  slices (the held-out slice is reported in domain; the gold slice stops training early);
- hh: hh-rlhf harmless-base test pairs after the first --hh-report ones (those are reported), with a seeded
  --hh-gold of them kept back for early stopping;
- both: the two together (gold: both gold slices).

Every evaluator is reported on every visible human set beside prefer-the-longer: PandaLM held out, LLMBar
Natural (never trained on) and the first --hh-report hh-rlhf harmless pairs, each marked in or out of domain,
and its card (evaluation.json) names its training data, so the loop report can show it.

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/rm_human_evaluators.py --out runs/human-evals [--sources pandalm,hh,both]
       [--balance] [--epochs 3]
Writes OUT/SOURCE[-balance]/ (a reward model with evaluation.json) and OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "bench"))

HH = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def human_sets(hh_report: int, hh_gold: int, seed: int) -> tuple[dict, dict, dict]:
    """(training pairs by source, gold pairs by source, report sets by name)."""
    from labelers.human_data import hh_pairs, llmbar_items
    from rm_loop_models import human_rows, splits

    sp = splits(seed)
    hh_all = hh_pairs(HH)[0]  # the same seeded A/B coin as bench/rm_alpaca_eval.py's --hh report set
    hh_report_set, hh_rest = hh_all[:hh_report], hh_all[hh_report:]
    random.Random(seed).shuffle(hh_rest)
    train = {"pandalm": human_rows(sp["evaluator"] + sp["labeler"]), "hh": human_rows(hh_rest[hh_gold:])}
    gold = {"pandalm": sp["gold"], "hh": hh_rest[:hh_gold]}
    report = {"pandalm_held_out": sp["held"], "llmbar_natural": llmbar_items(DATA / "llmbar-natural" / "dataset.json"), "hh_harmless": hh_report_set}
    return train, gold, report


IN_DOMAIN = {"pandalm": {"pandalm_held_out"}, "hh": {"hh_harmless"}, "both": {"pandalm_held_out", "hh_harmless"}}
DESCRIBE = {
    "pandalm": "PandaLM human majority (PandaLM test set, held-out and gold items excluded)",
    "hh": "hh-rlhf harmless-base human choices (test file, first report pairs and a gold slice excluded)",
    "both": "PandaLM human majority and hh-rlhf harmless-base human choices",
}


def write_card_for(folder: Path, training_data: str, source: str, pair_rewards, sets: dict, name: str) -> list[dict]:
    """Score every report set with pair_rewards (rows -> (r_a, r_b)), print the table rows, write FOLDER/evaluation.json."""
    from trainers.loop.evaluators import set_accuracy, write_card

    card = []
    for set_name, items in sets.items():
        decided = [r for r in items if r["human"] in ("A", "B")]
        o = set_accuracy(set_name, decided, *pair_rewards(decided), in_domain=set_name in IN_DOMAIN[source]).model_dump()
        card.append(o)
        lo, hi = o["vs_prefer_longer_ci"]
        print(f"| {name} | {set_name} | {o['n']} | {o['accuracy']:.1%} | {o['prefer_longer']:.1%} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {'yes' if o['in_domain'] else 'no'} |", flush=True)
    write_card(folder, {"training_data": training_data, "sets": card})
    return card


def recard(args, sets: dict) -> None:
    """--recard: score the evaluators already trained in OUT and rewrite their cards (training data from the card there)."""
    from labelers.rm_labeler import RewardModelScorer
    from trainers.loop.evaluators import read_card

    for source in args.sources.split(","):
        name = source + ("-balance" if args.balance else "")
        folder = Path(args.out) / name
        old = read_card(folder)
        if old is None:
            raise SystemExit(f"{folder} holds no evaluation.json to refresh; train it first (without --recard)")
        scorer = RewardModelScorer(folder, max_length=args.max_length, device="cpu")
        write_card_for(folder, old.training_data, source, scorer.pair_rewards, sets, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/human-evals")
    ap.add_argument("--sources", default="pandalm,hh,both")
    ap.add_argument("--balance", action="store_true", help="length_balance=true: pairs won by the longer and by the shorter answer weigh the same")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--hh-report", type=int, default=500)
    ap.add_argument("--hh-gold", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recard", action="store_true", help="train nothing: score the evaluators already in --out on the report sets and rewrite their evaluation.json")
    args = ap.parse_args()

    import torch

    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    torch.set_num_threads(2)
    train, gold, sets = human_sets(args.hh_report, args.hh_gold, args.seed)
    print({k: len(v) for k, v in train.items()}, "training pairs;", {k: len(v) for k, v in sets.items()}, "report pairs", flush=True)
    print("| evaluator | set | n | accuracy | prefer-longer | 95% CI of the difference, points | in domain |\n|---|---|---|---|---|---|---|", flush=True)
    if args.recard:
        return recard(args, sets)
    out = Path(args.out)
    results = {"args": vars(args)}
    for source in args.sources.split(","):
        parts = ["pandalm", "hh"] if source == "both" else [source]
        rows = [r for p in parts for r in train[p]]
        gold_rows = [r for p in parts for r in gold[p]]
        random.Random(args.seed).shuffle(rows)
        cfg = RewardConfig(labels="soft", epochs=args.epochs, seed=args.seed, max_length=args.max_length, batch_size=16, lr=args.lr, length_balance=args.balance, early_stopping=True)
        name = source + ("-balance" if args.balance else "")
        t0 = time.perf_counter()
        tr = RewardTrainer(cfg)
        res = tr.train(rows, None, gold_rows=gold_rows)
        seconds = time.perf_counter() - t0
        training_data = f"{DESCRIBE[source]}: {len(rows)} pairs" + (", length-balanced" if args.balance else "")
        tr.save(out / name, res, {"bench": "bench/rm_human_evaluators.py", "source": source, "training_data": training_data})
        card = write_card_for(out / name, training_data, source, tr.pair_rewards, sets, name)
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results[name] = {"n_train": res.n_train, "gold_curve": res.gold_curve, "best_epoch": res.best_epoch, "seconds": seconds, "max_rss_gb": rss_gb, "sets": card}
        print(f"{name}: {res.n_train} pairs, gold accuracy per epoch {[round(a, 3) for a in res.gold_curve]}, {seconds:.0f} s, peak RSS {rss_gb:.1f} GB", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / ("bench-balance.json" if args.balance else "bench.json")).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
