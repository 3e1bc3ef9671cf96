"""Agreement metrics between an AI labeler and human labels. Every function has a known-answer test.

Conventions: labels are "A", "B" or "tie"; ``p`` is the labeler's P(A > B).
"""

from __future__ import annotations

import math
import random

from aifeedback.preference import position_preferred


def accuracy(pred: list[str], gold: list[str]) -> float:
    """Share of items where the prediction equals the gold label."""
    if not pred:
        return float("nan")
    return sum(p == g for p, g in zip(pred, gold)) / len(pred)


def bootstrap_ci(pred: list[str], gold: list[str], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the accuracy.

    Each of the n_boot replicates draws n items by ``random.Random(seed).randrange(n)``; lo and hi are the order
    statistics floor(alpha/2 n_boot) and floor((1 - alpha/2) n_boot) (at most n_boot - 1) of the replicates.
    """
    n = len(pred)
    if n == 0:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    hits = [p == g for p, g in zip(pred, gold)]
    stats = sorted(sum(hits[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = stats[int(alpha / 2 * n_boot)]
    hi = stats[min(n_boot - 1, int((1 - alpha / 2) * n_boot))]
    return lo, hi


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e)."""
    n = len(a)
    if n == 0:
        return float("nan")
    cats = sorted(set(a) | set(b))
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    return 1.0 if pe == 1 else (po - pe) / (1 - pe)


def pairwise_human_agreement(annotations: list[list[str]]) -> float:
    """Mean agreement over all pairs of annotators of each item (the human ceiling)."""
    agree = total = 0
    for votes in annotations:
        for i in range(len(votes)):
            for j in range(i + 1, len(votes)):
                agree += votes[i] == votes[j]
                total += 1
    return agree / total if total else float("nan")


def position_stats(rows: list[dict]) -> dict:
    """Consistency across orders, same-position-preferred rate, and first-position preference."""
    both = [r for r in rows if r.get("p_ab") is not None and r.get("p_ba") is not None]
    if not both:
        return {"n_both_orders": 0}
    pos = [position_preferred(r["p_ab"], r["p_ba"]) for r in both]  # the one definition (aifeedback/preference.py)
    consistent = sum(p is None for p in pos)
    first = sum(p == "first" for p in pos)
    second = sum(p == "second" for p in pos)
    # first-position preference: share of single orders in which response 1 won
    wins_first = sum((r["p_ab"] > 0.5) + (r["p_ba"] <= 0.5) for r in both)
    return {
        "n_both_orders": len(both),
        "consistency": consistent / len(both),
        "same_position_preferred": (first + second) / len(both),
        "first_position_won_both": first / len(both),
        "first_position_preference": wins_first / (2 * len(both)),
    }


def prefers_longer(pred: list[str], len_a: list[int], len_b: list[int]) -> float:
    """P(the preferred response is the longer one), over decided items of unequal length."""
    n = hits = 0
    for p, la, lb in zip(pred, len_a, len_b):
        if p not in ("A", "B") or la == lb:
            continue
        n += 1
        hits += (p == "A") == (la > lb)
    return hits / n if n else float("nan")


def ece(probs: list[float], outcomes: list[int], n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of confidence max(p, 1-p) vs correctness, and the reliability bins.

    ``probs``: P(A > B); ``outcomes``: 1 when A is the gold winner, else 0 (ties excluded upstream).
    """
    bins = [{"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": 0, "conf": 0.0, "acc": 0.0} for i in range(n_bins)]
    for p, y in zip(probs, outcomes):
        conf = max(p, 1 - p)
        correct = (p > 0.5) == (y == 1) if p != 0.5 else 0.5
        k = min(n_bins - 1, int(conf * n_bins))
        bins[k]["n"] += 1
        bins[k]["conf"] += conf
        bins[k]["acc"] += correct
    total = sum(b["n"] for b in bins)
    err = 0.0
    for b in bins:
        if b["n"]:
            b["conf"] /= b["n"]
            b["acc"] /= b["n"]
            err += b["n"] / total * abs(b["acc"] - b["conf"])
    return (err if total else float("nan")), bins


def _nll(probs: list[float], outcomes: list[int], t: float) -> float:
    s = 0.0
    for p, y in zip(probs, outcomes):
        p = min(max(p, 1e-9), 1 - 1e-9)
        z = math.log(p / (1 - p)) / t
        q = 1 / (1 + math.exp(-z))
        q = min(max(q, 1e-12), 1 - 1e-12)
        s -= y * math.log(q) + (1 - y) * math.log(1 - q)
    return s


T_MIN, T_MAX = 0.05, 100.0  # fit_temperature's search range


def fit_temperature(probs: list[float], outcomes: list[int]) -> float:
    """Temperature minimising the NLL of sigmoid(logit(p)/T), by golden-section search over log T in [T_MIN, T_MAX].

    The NLL is minimised at the edge of the range when no finite T is best: when every outcome is on the side
    its p leans to (a perfectly separable gold set) the result is T_MIN, as sharp as allowed; when every one is
    on the other side (or every p is 1/2) it is T_MAX, p pulled to 1/2.
    """
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(probs, outcomes, math.exp(a)), _nll(probs, outcomes, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(probs, outcomes, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(probs, outcomes, math.exp(b))
    return math.exp((lo + hi) / 2)


def cv_temperature(probs: list[float], outcomes: list[int], folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated temperature scaling: ECE before, and after with T fitted on the other folds."""
    from labelers.scores import apply_temperature

    n = len(probs)
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    scaled = [0.0] * n
    temps = []
    for f in range(folds):
        test = set(idx[f::folds])
        train = [i for i in idx if i not in test]
        t = fit_temperature([probs[i] for i in train], [outcomes[i] for i in train]) if train else 1.0
        temps.append(t)
        for i in test:
            scaled[i] = apply_temperature(probs[i], t)
    before, _ = ece(probs, outcomes)
    after, bins_after = ece(scaled, outcomes)
    return {"ece_before": before, "ece_after": after, "fold_temperatures": temps, "temperature": fit_temperature(probs, outcomes), "bins_after": bins_after}


def coverage_curve(probs: list[float], pred: list[str], gold: list[str], steps: int = 10) -> list[dict]:
    """Agreement on the most confident fraction of items, for fractions 1/steps .. 1."""
    order = sorted(range(len(probs)), key=lambda i: -abs(probs[i] - 0.5))
    out = []
    for k in range(1, steps + 1):
        m = max(1, round(len(order) * k / steps))
        sel = order[:m]
        out.append({"coverage": m / len(order), "agreement": accuracy([pred[i] for i in sel], [gold[i] for i in sel]), "min_confidence": abs(probs[sel[-1]] - 0.5) * 2})
    return out
