"""Win-rate statistics of the loop's evaluation: the win rate of the new policy over the initial one,
its length-controlled version (a logistic fit on the length difference), and bootstrap CIs over prompts."""

from __future__ import annotations

import math
import random

from aifeedback.errors import InputError


def logistic_fit(x: list[float], y: list[float], l2: float = 1e-3, iters: int = 30) -> tuple[float, float]:
    """(theta0, theta1) of P(y=1) = sigmoid(theta0 + theta1 x) by Newton's method (y may be fractional)."""
    import numpy as np

    X = np.column_stack([np.ones(len(x)), np.asarray(x, float)])
    Y = np.asarray(y, float)
    th = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ th)))
        g = X.T @ (p - Y) + l2 * th
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(2)
        th -= np.linalg.solve(H, g)
    return float(th[0]), float(th[1])


def ci95(values: list[float]) -> list[float]:
    """A 95% percentile interval of bootstrap replicates: the order statistics floor(0.025 (n - 1)) and
    ceil(0.975 (n - 1)) (numpy's "lower" and "higher" quantiles)."""
    v = sorted(values)
    return [v[int(0.025 * (len(v) - 1))], v[math.ceil(0.975 * (len(v) - 1))]]


def paired_difference(hits: list[bool], baseline_hits: list[bool], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy minus a baseline's on the same pairs, with a 95% CI from a paired bootstrap: each of the n_boot
    replicates draws len(hits) pair indices by ``random.Random(seed).randrange`` and takes both rules' hits on them."""
    if len(hits) != len(baseline_hits) or not hits:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists of hits (got {len(hits)} and {len(baseline_hits)})")
    d = [int(a) - int(b) for a, b in zip(hits, baseline_hits)]
    n, rng = len(d), random.Random(seed)
    boot = [sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)]
    return {"difference": sum(d) / n, "ci": ci95(boot), "n_boot": n_boot}


def verdict(new: dict, base: dict) -> int:
    """One evaluator's verdict on a (new, initial) sample pair: 1 the new one wins, -1 the initial one, 0 a tie.
    A tie is equal rewards, or the same response text: a reward model scores the same text a few ulps apart in
    batches of other widths, and that noise must not break a tie (a policy that barely moved repeats many texts)."""
    if new.get("response") is not None and new.get("response") == base.get("response"):
        return 0
    return (new["reward"] > base["reward"]) - (new["reward"] < base["reward"])


def win_stats(new: list[dict], base: list[dict], n_boot: int, seed: int) -> dict:
    """Win rate of new over base (same prompt and sample index; ties count 1/2), its length-controlled version, CIs by prompt bootstrap.

    Length control (after AlpacaEval's): win ~ sigmoid(theta0 + theta1 tanh(dlen / sd)), dlen the token-length
    difference new - base, sd its root mean square; the length-controlled win rate is sigmoid(theta0), the win rate
    at equal length.

    The bootstrap resamples prompts, not samples (a prompt's samples are correlated): each of the n_boot replicates
    draws len(prompts) prompt ids by ``random.Random(seed).choice`` from the sorted ids and takes every sample of
    each drawn prompt. A 95% CI is the order statistics floor(0.025 (n_boot - 1)) and ceil(0.975 (n_boot - 1)) of
    the replicates (numpy's "lower" and "higher" quantiles).
    """
    b = {(r["prompt_id"], r["sample_index"]): r for r in base}
    pairs = [(r, b[(r["prompt_id"], r["sample_index"])]) for r in new if (r["prompt_id"], r["sample_index"]) in b]
    if not pairs:
        raise InputError("no held-out sample of the new policy matches one of the initial policy's; delete RUN/baseline and re-run")
    wins = [(1 + verdict(n, o)) / 2 for n, o in pairs]  # ties count 1/2
    dlen = [n["tokens"] - o["tokens"] for n, o in pairs]
    sd = (sum(d * d for d in dlen) / len(dlen)) ** 0.5 or 1.0
    feat = [math.tanh(d / sd) for d in dlen]
    prompts = sorted({n["prompt_id"] for n, _ in pairs})
    by_prompt: dict[str, list[int]] = {}
    for j, (n, _) in enumerate(pairs):
        by_prompt.setdefault(n["prompt_id"], []).append(j)

    def lc(idx: list[int]) -> float:
        t0, _ = logistic_fit([feat[j] for j in idx], [wins[j] for j in idx])
        return 1 / (1 + math.exp(-t0))

    rng = random.Random(seed)
    boot_w, boot_lc = [], []
    for _ in range(n_boot):
        idx = [j for p in (rng.choice(prompts) for _ in prompts) for j in by_prompt[p]]
        boot_w.append(sum(wins[j] for j in idx) / len(idx))
        boot_lc.append(lc(idx))

    return {
        "n": len(pairs),
        "n_prompts": len(prompts),
        "win_rate": sum(wins) / len(wins),
        "win_rate_ci": ci95(boot_w),
        "lc_win_rate": lc(list(range(len(pairs)))),
        "lc_win_rate_ci": ci95(boot_lc),
        "mean_tokens_new": sum(n["tokens"] for n, _ in pairs) / len(pairs),
        "mean_tokens_initial": sum(o["tokens"] for _, o in pairs) / len(pairs),
        "mean_reward_new": sum(n["reward"] for n, _ in pairs) / len(pairs),
        "mean_reward_initial": sum(o["reward"] for _, o in pairs) / len(pairs),
    }
