"""Labelling throughput, both orders with soft labels, on the embedded model, measured side by side:

* ours: the Labeler (a batch's shared prefix once, each pair's context once, batched suffixes)
* naive: one full forward pass per order per pair, batch 1, no prefix reuse
* roofline: fp32 GEMM FLOP/s measured in this run / (2 * params * tokens that must be computed)

Pairs come from hh-rlhf harmless-base in ../shared/data when present, else from
data/prompts with two canned responses each. Usage:
    .venv/bin/python bench/label_throughput.py [--pairs 48]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def gemm_flops(seconds: float = 3.0, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0)


def load_pairs(n: int) -> tuple[list[dict], str]:
    if HH.is_file():
        from labelers.human_data import hh_pairs

        return hh_pairs(HH, n)[0], "hh-rlhf harmless-base"
    import json

    rows = [json.loads(line) for line in (REPO / "data" / "prompts" / "prompts.jsonl").open()]
    pairs = []
    for i in range(n):
        r = rows[i % len(rows)]
        pairs.append({"pair_id": f"p{i}", "messages": [{"role": "user", "content": r["prompt"]}], "response_a": "I am not sure, sorry.", "response_b": f"Here is a careful answer to: {r['prompt']}"})
    return pairs, "data/prompts (canned responses)"


def naive_label(backend, labeler, pairs) -> tuple[list[float], int]:
    """Both orders, one full forward pass each, batch 1. Returns (p(A>B) per pair, tokens computed)."""
    out, tokens = [], 0
    cands = labeler.template.candidates
    variants = backend.candidate_variants(cands)
    for pair in pairs:
        prep, _ = labeler.prepare(pair)
        ps = []
        for order in ("AB", "BA"):
            sp = labeler.template.prompt(labeler._sample_fields(prep.fields, order))
            ids = backend.encode(backend.render(sp.messages) + sp.answer_prefix)
            tokens += len(ids)
            lps = backend._score_sequences_single(ids, variants)[0]
            import math

            e = [math.exp(x) for x in lps]
            probs = [x / sum(e) for x in e]
            ps.append(probs[0] if order == "AB" else probs[1])
        out.append(sum(ps) / 2)
    return out, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--naive-pairs", type=int, default=16, help="the naive labeller is slow: time it on a prefix of the pairs")
    args = ap.parse_args()

    from aifeedback.config import LabelConfig
    from aifeedback.stage import cached_backend
    from labelers.labeler import Labeler
    from labelers.templates import load_template

    pairs, source = load_pairs(args.pairs)
    cfg = LabelConfig()
    backend = cached_backend(cfg.backend)
    labeler = Labeler(backend, cfg, load_template("pairwise"), None)
    n_params = sum(p.numel() for p in backend.model.parameters())
    labeler.label(pairs[:2], "warm", "m", None)  # warm-up

    flops = gemm_flops()
    backend.stats.tokens_prefilled = 0
    t0 = time.perf_counter()
    rows, _ = labeler.label(pairs, "bench", "m", None)
    ours_s = time.perf_counter() - t0
    needed_tokens = backend.stats.tokens_prefilled
    ours = len(rows) / ours_s

    sub = pairs[: args.naive_pairs]
    t0 = time.perf_counter()
    naive_p, naive_tokens = naive_label(backend, labeler, sub)
    naive_s = time.perf_counter() - t0
    naive = len(sub) / naive_s
    ours_p = {r["pair_id"]: r["p_a"] for r in rows}
    max_diff = max(abs(ours_p[p["pair_id"]] - q) for p, q in zip(sub, naive_p))

    roofline = flops / (2 * n_params * needed_tokens / len(rows))
    print(f"pairs: {len(rows)} from {source}; model params {n_params / 1e6:.1f} M; torch threads {torch.get_num_threads()}")
    print(f"fp32 GEMM measured: {flops / 1e9:.1f} GFLOP/s; tokens computed per pair: {needed_tokens / len(rows):.0f} (aifeedback), {naive_tokens / len(sub):.0f} (naive)")
    print("| labeller | pairs/s | ratio |")
    print("|---|---|---|")
    print(f"| naive both-order (batch 1, no prefix reuse) | {naive:.3f} | 1.00x |")
    print(f"| aifeedback | {ours:.3f} | {ours / naive:.2f}x naive |")
    print(f"| roofline | {roofline:.3f} | ours = {ours / roofline:.0%} of roofline |")
    print(f"max |p_ours - p_naive| on the shared pairs: {max_diff:.2e}")


if __name__ == "__main__":
    main()
