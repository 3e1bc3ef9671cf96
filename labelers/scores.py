"""Small, pure functions over label probabilities (all unit-tested with known answers)."""

from __future__ import annotations

import math

from aifeedback.preference import apply_temperature, expected_score, hard_label, p_greater, position_preferred, winner  # noqa: F401 - the one definition


def normalised_reward(score: float, lo: float = 1.0, hi: float = 10.0) -> float:
    """d-RLAIF reward: an expected score on [lo, hi] mapped to [-1, 1]."""
    return 2.0 * (score - lo) / (hi - lo) - 1.0


def calibrate(probs: list[float], prior: list[float]) -> list[float]:
    """Contextual calibration: divide by the content-free prior and renormalise."""
    w = [p / max(q, 1e-12) for p, q in zip(probs, prior)]
    s = sum(w)
    return [x / s for x in w] if s > 0 else probs


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
