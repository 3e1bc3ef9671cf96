"""Small, pure functions over label probabilities (all unit-tested with known answers)."""

from __future__ import annotations

import math


def expected_score(probs: list[float], candidates: list[str]) -> float:
    """sum_i i * P(i) over numeric candidates ("1".."10")."""
    return sum(float(c) * p for c, p in zip(candidates, probs))


def normalised_reward(score: float, lo: float = 1.0, hi: float = 10.0) -> float:
    """d-RLAIF reward: an expected score on [lo, hi] mapped to [-1, 1]."""
    return 2.0 * (score - lo) / (hi - lo) - 1.0


def p_greater(pa: list[float], pb: list[float]) -> float:
    """P(S_A > S_B) + 0.5 P(S_A = S_B) for independent score distributions over the same ordered scale."""
    total = 0.0
    cum_b = 0.0
    for i in range(len(pa)):
        total += pa[i] * (cum_b + 0.5 * pb[i])
        cum_b += pb[i]
    return total


def calibrate(probs: list[float], prior: list[float]) -> list[float]:
    """Contextual calibration: divide by the content-free prior and renormalise."""
    w = [p / max(q, 1e-12) for p, q in zip(probs, prior)]
    s = sum(w)
    return [x / s for x in w] if s > 0 else probs


def apply_temperature(p: float, temperature: float) -> float:
    """Scale the log-odds of a probability by 1/temperature."""
    if temperature == 1.0:
        return p
    p = min(max(p, 1e-9), 1 - 1e-9)
    z = math.log(p / (1 - p)) / temperature
    return 1 / (1 + math.exp(-z))


def hard_label(p_a: float, tie_margin: float) -> str:
    if abs(p_a - 0.5) < tie_margin:
        return "tie"
    return "A" if p_a > 0.5 else "B"


def position_preferred(p_ab: float, p_ba: float) -> str | None:
    """When the two orders disagree, which position won both times (None when consistent).

    p_ab: P(A better) with A shown first; p_ba: P(A better) with A shown second.
    """
    a_first_wins = p_ab > 0.5
    a_second_wins = p_ba > 0.5
    if a_first_wins == a_second_wins:
        return None
    return "first" if a_first_wins and not a_second_wins else "second"


def bradley_terry(n_items: int, wins: list[tuple[int, int, float]], iters: int = 200, tol: float = 1e-9) -> list[float]:
    """Bradley-Terry strengths (log-scale, mean 0) from soft wins [(i, j, P(i beats j))] by the MM algorithm."""
    if n_items == 0:
        return []
    w = [[0.0] * n_items for _ in range(n_items)]
    for i, j, p in wins:
        w[i][j] += p
        w[j][i] += 1 - p
    s = [1.0] * n_items
    prior = 0.01  # a small symmetric prior keeps undefeated items finite
    for _ in range(iters):
        new = []
        for i in range(n_items):
            num = sum(w[i][j] for j in range(n_items) if j != i) + prior
            den = sum((w[i][j] + w[j][i] + 2 * prior) / (s[i] + s[j]) for j in range(n_items) if j != i)
            new.append(num / den if den > 0 else s[i])
        g = math.exp(sum(math.log(x) for x in new) / n_items)
        new = [x / g for x in new]
        delta = max(abs(a - b) for a, b in zip(new, s))
        s = new
        if delta < tol:
            break
    return [math.log(x) for x in s]
