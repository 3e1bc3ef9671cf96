"""A distilled labeler trained on AlpacaEval's GPT-4-turbo soft labels, with the ways of controlling length side by side.

Training data: the AlpacaEval 2.0 annotations in ../shared/data/alpaca-eval (each output against the reference,
soft label 2 - preference), plus the concise/verbose contrast pairs derived through the reference (Bradley-Terry)
when --derive contrast. A seeded subset of --n-train pairs when given.

Variants (RewardConfig, one MiniLM each, same data, same seed):
- none: the judge's soft labels as they are;
- residual: length_control=residual (the judge's length effect fitted and removed from the targets);
- residual6: the same with log-odds clipped at 1e-6 instead of the default 0.01 (the setting of the first measurement);
- balance: length_balance=true (pairs won by the longer and the shorter answer weigh the same);
- odin: length_head=true (a second head absorbs length).

Model selection uses only the gold slice: 10% of PandaLM's human-labelled items (bench/rm_loop_models.py's seeded
split), for early stopping. Every set is reported beside prefer-the-longer, and on its pairs where humans preferred
the shorter answer: PandaLM human majority (all items except the gold slice), LLMBar Natural, and hh-rlhf
harmless-base test (--hh first pairs). None of them is used in training.

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/rm_alpaca_eval.py --out runs/ae-rms [--variants none,residual]
       [--n-train 4000] [--derive contrast] [--epochs 1] [--max-length 128] [--hh 500] [--backbone embedded/smollm2-135m-instruct]
Writes OUT/VARIANT/ (a reward model folder with evaluation.json) and OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "bench"))

VARIANTS = {
    "none": {},
    "residual": {"length_control": "residual"},
    "residual6": {"length_control": "residual", "length_control_eps": 1e-6},
    "balance": {"length_balance": True},
    "odin": {"length_head": True},
}


def training_rows(derive: str, eps: float, n_train: int | None, seed: int) -> tuple[list[dict], dict]:
    from labelers.alpaca_eval import AlpacaEvalConfig, derive as derive_pairs, read_alpaca_eval
    from aifeedback.records import pair_problem

    cfg = AlpacaEvalConfig(derive_pairs=derive, eps=eps)
    data = read_alpaca_eval(str(DATA / "alpaca-eval"), cfg)
    pairs = [p for p in data.pairs if pair_problem(p) is None] + list(derive_pairs(data, cfg))
    rows = []
    for p in pairs:
        pa = p["verdict"]["p_a"]
        if pa == 0.5:  # no preference either way: nothing to learn from
            continue
        rows.append({k: p[k] for k in ("pair_id", "messages", "response_a", "response_b")} | {"p_a": pa, "hard_label": "A" if pa > 0.5 else "B", "confidence": abs(2 * pa - 1), "consistent": None, "derived": p["verdict"]["source"]})
    random.Random(seed).shuffle(rows)
    if n_train:
        rows = rows[:n_train]
    info = {"read": data.counts, "train_pairs": len(rows), "derived_in_train": sum(r["derived"].startswith("derived") for r in rows)}
    return rows, info


def eval_sets(hh: int) -> tuple[dict[str, list[dict]], list[dict]]:
    from labelers.human_data import hh_pairs, llmbar_items
    from rm_loop_models import splits

    sp = splits(0)
    gold_ids = {p["pair_id"] for p in sp["gold"]}
    pandalm = [p for k in ("held", "evaluator", "labeler") for p in sp[k] if p["pair_id"] not in gold_ids]
    sets = {"pandalm_human": pandalm, "llmbar_natural": llmbar_items(DATA / "llmbar-natural" / "dataset.json")}
    hh_path = DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    if hh and hh_path.is_file():
        sets["hh_harmless"] = hh_pairs(hh_path, hh)[0]
    return sets, sp["gold"]


def shorter_won(rows: list[dict], hits: list[bool]) -> dict:
    """Accuracy on the pairs where humans preferred the shorter answer (equal lengths are not among them)."""
    from trainers.reward_trainer import longer_side

    shorter = [h for h, r in zip(hits, rows) if longer_side(r) not in (None, r["human"])]
    return {"n_shorter_preferred": len(shorter), "accuracy_shorter_preferred": sum(shorter) / len(shorter) if shorter else None}


def report(trainer, name: str, sets: dict[str, list[dict]]) -> list[dict]:
    """Each set's card entry (trainers.loop.evaluators.set_accuracy), with the accuracy on its pairs where humans preferred the shorter answer."""
    from trainers.loop.evaluators import set_accuracy

    out = []
    for set_name, rows in sets.items():
        rows = [r for r in rows if r["human"] in ("A", "B")]
        r_a, r_b = trainer.pair_rewards(rows)
        o = set_accuracy(set_name, rows, r_a, r_b, in_domain=False).model_dump()
        o |= shorter_won(rows, [(a > b) == (r["human"] == "A") for r, a, b in zip(rows, r_a, r_b)])
        out.append(o)
        lo, hi = o["vs_prefer_longer_ci"]
        print(f"| {name} | {set_name} | {o['n']} | {o['accuracy']:.1%} | {o['prefer_longer']:.1%} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {o['n_shorter_preferred']} | {o['accuracy_shorter_preferred'] or 0:.1%} |", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ae-rms")
    ap.add_argument("--variants", default="none,residual")
    ap.add_argument("--derive", default="contrast", choices=["none", "contrast", "all"])
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--hh", type=int, default=500, help="hh-rlhf harmless-base test pairs to report on (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="RewardConfig.checkpoint_every: save the training state every N steps in OUT/VARIANT/checkpoint; rerun the same command to resume")
    ap.add_argument("--backbone", default=None, help="RewardConfig.backbone (default: MiniLM); e.g. embedded/smollm2-135m-instruct")
    args = ap.parse_args()

    import resource

    import torch

    from trainers.loop.evaluators import write_card
    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    torch.set_num_threads(2)
    rows, info = training_rows(args.derive, args.eps, args.n_train, args.seed)
    sets, gold = eval_sets(args.hh)
    print(info, {k: len(v) for k, v in sets.items()}, f"gold {len(gold)}", flush=True)
    print("| RM | set | n | RM acc | prefer-longer [95% CI of the difference, points] | n shorter-preferred | RM acc there |\n|---|---|---|---|---|---|---|", flush=True)
    results = {"args": vars(args), "data": info}
    out = Path(args.out)
    for variant in args.variants.split(","):
        backbone = {"backbone": args.backbone} if args.backbone else {}
        cfg = RewardConfig(labels="soft", epochs=args.epochs, seed=args.seed, max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, early_stopping=True, checkpoint_every=args.checkpoint_every, **backbone, **VARIANTS[variant])
        t0 = time.perf_counter()
        tr = RewardTrainer(cfg)
        res = tr.train(rows, None, gold_rows=gold, checkpoint_dir=out / variant / "checkpoint")
        seconds = time.perf_counter() - t0
        training_data = f"AlpacaEval 2.0 GPT-4-turbo soft labels ({len(rows)} pairs, derive={args.derive}, eps={args.eps}), length control: {variant}, backbone {cfg.backbone}"
        tr.save(out / variant, res, {"bench": "bench/rm_alpaca_eval.py", "variant": variant, "training_data": training_data})
        sets_out = report(tr, variant, sets)
        write_card(out / variant, {"training_data": training_data, "sets": [{k: s[k] for k in ("set", "n", "accuracy", "prefer_longer", "vs_prefer_longer_ci", "in_domain")} for s in sets_out]})
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results[variant] = {"n_train": res.n_train, "gold_curve": res.gold_curve, "best_epoch": res.best_epoch, "seconds": seconds, "training_seconds": res.seconds, "resumed_from_step": res.resumed_from_step, "max_rss_gb": rss_gb, "sets": sets_out}
        print(f"{variant}: {res.n_train} pairs, gold accuracy per epoch {[round(a, 3) for a in res.gold_curve]}, {seconds:.0f} s, peak RSS {rss_gb:.1f} GB", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
