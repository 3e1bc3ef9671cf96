"""A linear probe on the frozen MiniLM sentence embeddings, trained on AlpacaEval's AI labels (#29).

Does the backbone's frozen representation carry a preference signal out of domain, apart from length? Each text
(prompt, response) is embedded once with the embedded all-MiniLM-L6-v2 (mean pooling, L2-normalised, the way the
model was trained; --max-length tokens). A pair's features are the difference of the two responses' features:
- e: the response embedding (384);
- x: the element-wise product with the prompt embedding (384), a relevance signal;
- l: log(1 + response tokens), the whole response, however long.
A Bradley-Terry logistic regression (L-BFGS, L2 weight --l2 values, both orders of every pair) is fitted on the
judge's soft labels of every AlpacaEval training pair of bench/rm_alpaca_eval.py (contrast pairs included), and
reported on its sets beside prefer-the-longer, with the gold slice's accuracy, the only figure to choose by.

Usage: .venv/bin/python bench/rm_frozen_probe.py --features l,e,ex,exl --out runs/frozen-probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))


class Embedder:
    def __init__(self, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        from aifeedback.models import minilm_dir

        self.tok = AutoTokenizer.from_pretrained(minilm_dir())
        self.model = AutoModel.from_pretrained(minilm_dir()).eval()
        self.max_length = max_length
        self.cache: dict[str, object] = {}

    def __call__(self, texts: list[str]):
        import torch

        todo = sorted((t for t in dict.fromkeys(texts) if t not in self.cache), key=len)
        with torch.inference_mode():
            for s in range(0, len(todo), 64):
                batch = todo[s : s + 64]
                enc = self.tok(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                mask = enc["attention_mask"].unsqueeze(-1).float()
                e = (self.model(**enc).last_hidden_state * mask).sum(1) / mask.sum(1)
                for t, v in zip(batch, torch.nn.functional.normalize(e, dim=-1)):
                    self.cache[t] = v
        return torch.stack([self.cache[t] for t in texts])

    def log_lengths(self, texts: list[str]):
        import torch

        return torch.tensor([math.log1p(len(ids)) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]).unsqueeze(-1)


def pair_features(emb: Embedder, rows: list[dict], kinds: str):
    import torch

    from labelers.rm_labeler import prompt_text

    p = emb([prompt_text(r["messages"]) for r in rows])

    def side(key):
        texts = [r[key] for r in rows]
        r = emb(texts)
        parts = {"e": r, "x": p * r, "l": emb.log_lengths(texts)}
        return torch.cat([parts[k] for k in kinds], dim=1)

    return side("response_a") - side("response_b")


def fit(x, p_a, l2: float):
    import torch

    x, y = torch.cat([x, -x]), torch.cat([p_a, 1 - p_a])  # both orders: no position term to learn
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", default="l,e,ex,exl", help="comma-separated feature sets, each letters of e, x, l")
    ap.add_argument("--l2", default="1e-4,1e-3,1e-2")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--hh", type=int, default=500)
    ap.add_argument("--out", default="runs/frozen-probe.json")
    args = ap.parse_args()

    import torch

    from rm_alpaca_eval import eval_sets, training_rows
    from trainers.reward_trainer import longer_side

    torch.manual_seed(0)
    t0 = time.perf_counter()
    train, info = training_rows("contrast", 0.01, None, 0)
    sets, gold = eval_sets(args.hh)
    sets = {k: [r for r in v if r["human"] in ("A", "B")] for k, v in {"gold": gold, **sets}.items()}
    emb = Embedder(args.max_length)
    p_a = torch.tensor([r["p_a"] for r in train], dtype=torch.float32)
    result = {"args": vars(args), "train": info, "runs": []}
    print("| features | l2 | " + " | ".join(f"{s}: acc / shorter-preferred" for s in sets) + " |")
    for kinds in args.features.split(","):
        x_train = pair_features(emb, train, kinds)
        x_sets = {k: pair_features(emb, v, kinds) for k, v in sets.items()}
        for l2 in (float(v) for v in args.l2.split(",")):
            w = fit(x_train, p_a, l2)
            run = {"features": kinds, "l2": l2, "length_weight": float(w[-1]) if kinds.endswith("l") else None}
            for k, rows in sets.items():
                hits = [(s > 0) == (r["human"] == "A") for s, r in zip((x_sets[k] @ w).tolist(), rows)]
                shorter = [h for h, r in zip(hits, rows) if longer_side(r) not in (None, r["human"])]
                run[k] = {"n": len(rows), "accuracy": sum(hits) / len(rows), "accuracy_shorter_preferred": sum(shorter) / len(shorter), "prefer_longer": sum(longer_side(r) == r["human"] for r in rows) / len(rows)}
            result["runs"].append(run)
            print(f"| {kinds} | {l2:g} | " + " | ".join(f"{run[k]['accuracy']:.1%} / {run[k]['accuracy_shorter_preferred']:.1%}" for k in sets) + " |", flush=True)
    result["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
