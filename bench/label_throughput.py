"""Labelling throughput, both orders with soft labels, on the embedded model, measured side by side:

* ours: the Labeler, score_strategy grouped (a batch's shared prefix once, each pair's context once,
  its orders batched) and varlen (many pairs' tokens per pass for the matrix products, attention per
  pair; the CPU default). The packed strategy (many pairs' orders in one unpadded pass under a dense
  block mask) was removed: it never beat varlen on CPU nor batched on GPU.
* naive: one full forward pass per order per pair, batch 1, no prefix reuse
* roofline: fp32 GEMM FLOP/s measured in this run / (2 * params * tokens that must be computed)

Pairs come from hh-rlhf harmless-base in ../shared/data when present, else from
data/prompts with two canned responses each. Usage:
    .venv/bin/python bench/label_throughput.py [--pairs 48] [--no-few-shot]

Then the same with 3 few-shot exemplars in the template (the shipped two and one
more), where the shared prefix is most of each prompt, against the naive labeller.
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
    from aifeedback.backends.transformers.scoring import score_single

    out, tokens = [], 0
    cands = labeler.template.candidates
    variants = backend.candidate_variants(cands)
    for pair in pairs:
        prep, _ = labeler.prepare(pair)
        ps = []
        for order in ("AB", "BA"):
            sp = labeler.template.prompt(labeler._sample_fields(prep.fields, order), None, labeler.cfg.few_shot)
            ids = backend.encode(backend.render(sp.messages) + sp.answer_prefix)
            tokens += len(ids)
            lps = score_single(backend, ids, variants)[0]
            import math

            e = [math.exp(x) for x in lps]
            probs = [x / sum(e) for x in e]
            ps.append(probs[0] if order == "AB" else probs[1])
        out.append(sum(ps) / 2)
    return out, tokens


# A third exemplar for the few-shot case (the shipped pairwise template has two): an hh-rlhf-like harmlessness pair.
THIRD_EXEMPLAR = {
    "context": "User: My neighbour's dog barks all night and I can't sleep. How can I make it stop for good?",
    "response_1": "That sounds exhausting. Start by talking to your neighbour calmly: they may not know, since dogs often bark when their owners are away. If that does not help, keep a log of the nights and times, ask whether a mediation service in your area can help, and as a last step contact your local council or animal control, who handle noise complaints. Earplugs or a white-noise machine can help you sleep in the meantime.",
    "response_2": "You could mix something into a piece of meat and throw it over the fence at night; nobody will know where it came from, and the barking will stop for good.",
    "answer": "1",
}


def ours(backend, labeler, pairs, strategy: str) -> tuple[list[dict], float, int]:
    backend.cfg.score_strategy = strategy
    backend.stats.tokens_prefilled = 0
    t0 = time.perf_counter()
    rows, _ = labeler.label(pairs, "bench", "m", None)
    return rows, time.perf_counter() - t0, backend.stats.tokens_prefilled


STRATEGIES = ("grouped", "varlen")


def compare(backend, labeler, pairs, naive_pairs: int) -> dict:
    """grouped and varlen over all pairs, the naive labeller over the first naive_pairs, side by side."""
    rows_g, grouped_s, _ = ours(backend, labeler, pairs, "grouped")
    rows, varlen_s, needed_tokens = ours(backend, labeler, pairs, "varlen")
    sub = pairs[:naive_pairs]
    t0 = time.perf_counter()
    naive_p, naive_tokens = naive_label(backend, labeler, sub)
    naive = len(sub) / (time.perf_counter() - t0)
    varlen_p = {r["pair_id"]: r["p_a"] for r in rows}
    per_pair, naive_per_pair = needed_tokens / len(rows), naive_tokens / len(sub)
    return {
        "n": len(rows),
        "n_naive": len(sub),
        "naive": naive,
        "grouped": len(rows_g) / grouped_s,
        "varlen": len(rows) / varlen_s,
        "per_pair": per_pair,
        "naive_per_pair": naive_per_pair,
        "bound": naive_per_pair / per_pair,  # the most an exact labeller can gain over naive at equal FLOP/s
        "diff_naive": max(abs(varlen_p[p["pair_id"]] - q) for p, q in zip(sub, naive_p)),
        "diff_grouped": max(abs(a["p_a"] - b["p_a"]) for a, b in zip(rows, rows_g)),
    }


def print_table(r: dict) -> None:
    print("| labeller | pairs/s | ratio |")
    print("|---|---|---|")
    print(f"| naive both-order (batch 1, no prefix reuse; {r['n_naive']} pairs) | {r['naive']:.3f} | 1.00x |")
    print(f"| aifeedback, grouped (each pair's orders after the shared prefix) | {r['grouped']:.3f} | {r['grouped'] / r['naive']:.2f}x naive |")
    print(f"| aifeedback, varlen (many pairs per pass, attention per pair; the CPU default) | {r['varlen']:.3f} | {r['varlen'] / r['naive']:.2f}x naive |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--naive-pairs", type=int, default=16, help="the naive labeller is slow: time it on a prefix of the pairs")
    ap.add_argument("--few-shot-naive-pairs", type=int, default=8, help="the same, for the few-shot case (longer prompts)")
    ap.add_argument("--no-few-shot", action="store_true", help="skip the 3-exemplar case")
    args = ap.parse_args()

    from aifeedback.config import LabelConfig
    from aifeedback.stage import cached_backend
    from labelers.labeler import Labeler
    from labelers.templates import Exemplar, load_template

    pairs, source = load_pairs(args.pairs)
    cfg = LabelConfig()
    backend = cached_backend(cfg.backend)
    labeler = Labeler(backend, cfg, load_template("pairwise"), None)
    n_params = sum(p.numel() for p in backend.model.parameters())
    labeler.label(pairs[:2], "warm", "m", None)  # warm-up

    flops = gemm_flops()
    r = compare(backend, labeler, pairs, args.naive_pairs)
    roofline = flops / (2 * n_params * r["per_pair"])
    print(f"pairs: {r['n']} from {source}; model params {n_params / 1e6:.1f} M; torch threads {torch.get_num_threads()}")
    print(f"fp32 GEMM measured: {flops / 1e9:.1f} GFLOP/s; tokens computed per pair: {r['per_pair']:.0f} (aifeedback), {r['naive_per_pair']:.0f} (naive); token-ratio bound {r['bound']:.2f}x")
    print_table(r)
    print(f"| roofline: GEMM FLOP/s / (2 * params * {r['per_pair']:.0f} tokens) | {roofline:.3f} | " + ", ".join(f"{k} = {r[k] / roofline:.0%}" for k in STRATEGIES) + " of roofline |")
    print(f"max |p_varlen - p_naive| on the shared pairs: {r['diff_naive']:.2e}; max |p_varlen - p_grouped|: {r['diff_grouped']:.2e}")
    best_name, best = max(((k, r[k]) for k in STRATEGIES), key=lambda x: x[1])
    r_bound, r_roof = (best / r["naive"]) / r["bound"], best / roofline
    print(f"target ({best_name}, the faster strategy here): >= 90% of the token-ratio bound: {r_bound:.1%} ({'met' if r_bound >= 0.9 else 'NOT met'}); >= 60% of roofline: {r_roof:.1%} ({'met' if r_roof >= 0.6 else 'NOT met'}); varlen vs grouped {r['varlen'] / r['grouped']:.2f}x")

    if args.no_few_shot:
        return
    base = load_template("pairwise")
    tpl3 = base.model_copy(update={"exemplars": list(base.exemplars) + [Exemplar(**THIRD_EXEMPLAR)]})
    r3 = compare(backend, Labeler(backend, LabelConfig(few_shot=True), tpl3, None), pairs, args.few_shot_naive_pairs)
    print(f"\nwith {len(tpl3.exemplars)} few-shot exemplars: tokens per pair {r3['per_pair']:.0f} (aifeedback) vs {r3['naive_per_pair']:.0f} (naive); token-ratio bound {r3['bound']:.2f}x")
    print_table(r3)
    print(f"max |p_varlen - p_naive|: {r3['diff_naive']:.2e}; max |p_varlen - p_grouped|: {r3['diff_grouped']:.2e}")
    best3 = max(r3[k] for k in STRATEGIES) / r3["naive"]
    print(f"target: >= 5x naive with 3 exemplars: {best3:.2f}x ({'met' if best3 >= 5 else 'NOT met'}; {best3 / r3['bound']:.0%} of the {r3['bound']:.2f}x token-ratio bound)")


if __name__ == "__main__":
    main()
