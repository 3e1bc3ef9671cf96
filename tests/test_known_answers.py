"""Known answers for the statistics: the loop's prompt-bootstrap CIs, the labeler's accuracy CI, and temperature fitting.

Each CI is rebuilt here by hand from its documented resampling (same seed, same draws) and compared with the
product's; each width is also checked against its analytic value, so a CI that ignores the data, its grouping or
its order fails. Temperatures are checked against T* used to draw the outcomes and against a numpy grid search.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)

Z95 = 1.959964


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------- the loop's win-rate CIs (trainers/loop/stats.py)

SAMPLES = 4  # samples per prompt, sample_index 0..3: even ones are 10 tokens longer than the initial policy's, odd ones 10 shorter
KINDS = "GGGGGBBBLLLL" * 4  # 48 prompts: G wins all its samples, B loses all, L wins exactly its two longer ones


def _loop_rows() -> tuple[list[dict], list[dict]]:
    new, base = [], []
    for i, kind in enumerate(KINDS):
        for s in range(SAMPLES):
            longer = s % 2 == 0
            won = kind == "G" or (kind == "L" and longer)
            base.append({"prompt_id": f"p{i:02d}", "sample_index": s, "reward": 0.0, "tokens": 20})
            new.append({"prompt_id": f"p{i:02d}", "sample_index": s, "reward": 1.0 if won else -1.0, "tokens": 30 if longer else 10})
    return new, base


def _wins(kind: str) -> list[tuple[float, bool]]:
    """(win, longer) of each of a prompt's samples."""
    return [(1.0 if kind == "G" or (kind == "L" and s % 2 == 0) else 0.0, s % 2 == 0) for s in range(SAMPLES)]


def _lc_by_hand(rows: list[tuple[float, bool]]) -> float:
    """The length-controlled win rate in closed form: every pair is +-10 tokens, so tanh(dlen/sd) is +-c and the
    logistic fit is saturated: sigmoid(t0 + t1 c) = a (win rate of the longer), sigmoid(t0 - t1 c) = b, so
    t0 = (logit a + logit b) / 2."""
    a = np.mean([w for w, longer in rows if longer])
    b = np.mean([w for w, longer in rows if not longer])
    return sigmoid((logit(a) + logit(b)) / 2)


def _prompt_bootstrap_by_hand(n_boot: int, seed: int) -> tuple[list[float], list[float]]:
    """Replicates of the win rate and the LC win rate, resampling prompts as win_stats documents (random.Random(seed).choice over the sorted ids)."""
    ids = sorted(f"p{i:02d}" for i in range(len(KINDS)))
    kind = {f"p{i:02d}": k for i, k in enumerate(KINDS)}
    rng = random.Random(seed)
    raw, lc = [], []
    for _ in range(n_boot):
        rows = [r for p in [rng.choice(ids) for _ in ids] for r in _wins(kind[p])]
        raw.append(sum(w for w, _ in rows) / len(rows))
        lc.append(_lc_by_hand(rows))
    return raw, lc


def _ci95(v: list[float]) -> list[float]:
    return [float(np.quantile(v, 0.025, method="lower")), float(np.quantile(v, 0.975, method="higher"))]


@pytest.fixture(scope="module")
def loop_stats() -> dict:
    from trainers.loop.stats import win_stats

    new, base = _loop_rows()
    return win_stats(new, base, 1000, 7)


def test_win_rates_by_hand(loop_stats):
    s = loop_stats
    assert (s["n"], s["n_prompts"]) == (48 * SAMPLES, 48)
    # 20 G prompts x 4 wins + 16 L prompts x 2 wins, of 192 samples
    assert s["win_rate"] == (20 * 4 + 16 * 2) / 192
    # the longer samples win 36 of 48, the shorter 20 of 48
    assert s["lc_win_rate"] == pytest.approx(sigmoid((logit(36 / 48) + logit(20 / 48)) / 2), abs=1e-3)
    assert s["mean_tokens_new"] == 20 and s["mean_tokens_initial"] == 20


def test_win_rate_ci_is_the_prompt_bootstrap_rebuilt_by_hand(loop_stats):
    raw, lc = _prompt_bootstrap_by_hand(1000, 7)
    assert loop_stats["win_rate_ci"] == _ci95(raw)  # exact: the replicates are sums of 0/1 over the same draws
    # the product's LC replicates are L2-penalised Newton fits (l2 = 1e-3); the closed form is the unpenalised MLE (1e-5 apart here)
    assert loop_stats["lc_win_rate_ci"] == pytest.approx(_ci95(lc), abs=1e-4)


def test_win_rate_ci_width_is_the_per_prompt_one_not_the_per_sample_one(loop_stats):
    """All of a G or B prompt's samples agree, so the prompt is the unit: the CI is about 1.6 times wider than
    resampling the 192 samples as if independent would give (normal approximations of both bootstraps)."""
    prompt_means = np.array([np.mean([w for w, _ in _wins(k)]) for k in KINDS])
    samples = np.array([w for k in KINDS for w, _ in _wins(k)])
    per_prompt = 2 * Z95 * prompt_means.std() / math.sqrt(len(prompt_means))  # 0.222
    per_sample = 2 * Z95 * samples.std() / math.sqrt(len(samples))  # 0.139
    lo, hi = loop_stats["win_rate_ci"]
    assert lo < loop_stats["win_rate"] < hi
    assert hi - lo == pytest.approx(per_prompt, rel=0.15)
    assert hi - lo > 1.3 * per_sample


def test_lc_ci_brackets_its_rate_and_is_not_trivial(loop_stats):
    lo, hi = loop_stats["lc_win_rate_ci"]
    assert 0 < lo < loop_stats["lc_win_rate"] < hi < 1
    # about as wide as the raw CI (0.22 by the normal approximation), far from [0, 1]
    assert 0.1 < hi - lo < 0.4


def test_lc_rate_and_ci_follow_the_length_effect():
    """Wins follow length: 4 in 5 longer samples win, 1 in 5 shorter ones. With two longer samples per prompt for
    one shorter the raw win rate is 0.6, but at equal length it is 1/2."""
    from trainers.loop.stats import win_stats

    new, base = [], []
    for i in range(30):
        for s in range(3):  # two longer samples and one shorter: 2/3 of samples win
            longer = s < 2
            won = longer if i % 5 else not longer  # one prompt in five goes against length
            base.append({"prompt_id": f"q{i}", "sample_index": s, "reward": 0.0, "tokens": 50})
            new.append({"prompt_id": f"q{i}", "sample_index": s, "reward": 1.0 if won else -1.0, "tokens": 70 if longer else 30})
    s = win_stats(new, base, 300, 1)
    assert s["win_rate"] == pytest.approx((24 * 2 + 6 * 1) / 90)
    # longer win 48/60, shorter win 6/30: t0 = (logit .8 + logit .2)/2 = 0
    assert s["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)
    # any resample of m against-length prompts of 30: a = (30 - m)/30, b = m/30, logit a + logit b = 0: every replicate is 1/2
    assert s["lc_win_rate_ci"] == pytest.approx([0.5, 0.5], abs=1e-3)
    assert s["win_rate_ci"][0] > 0.5  # the raw rate's CI excludes 1/2: length alone lifted it


# ---------------------------------------------------------------- the labeler's accuracy CI (labelers/metrics.py)


def _binomial_quantile(n: int, p: float, q: float) -> float:
    """Smallest k/n with P(Binomial(n, p) <= k) >= q: the exact percentile of the accuracy's bootstrap distribution."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= q:
            return k / n
    return 1.0


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_accuracy_ci_by_hand(alpha):
    from labelers.metrics import bootstrap_ci

    n, n_boot, seed = 100, 2000, 3
    gold = ["A"] * n
    pred = ["A" if i % 5 else "B" for i in range(n)]  # 80 hits
    lo, hi = bootstrap_ci(pred, gold, n_boot=n_boot, seed=seed, alpha=alpha)
    # rebuilt from the documented resampling: n draws by randrange per replicate, order statistics floor(alpha/2 B), floor((1 - alpha/2) B)
    rng = random.Random(seed)
    hits = [p == g for p, g in zip(pred, gold)]
    reps = sorted(sum(hits[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    assert (lo, hi) == (reps[math.floor(alpha / 2 * n_boot)], reps[math.floor((1 - alpha / 2) * n_boot)])
    # and the bootstrap distribution of an accuracy is Binomial(n, 0.8) / n: its percentiles, within one item
    assert lo == pytest.approx(_binomial_quantile(n, 0.8, alpha / 2), abs=1 / n + 1e-12)
    assert hi == pytest.approx(_binomial_quantile(n, 0.8, 1 - alpha / 2), abs=1 / n + 1e-12)


# ---------------------------------------------------------------- temperature fitting (labelers/metrics.py)


def temperature_by_grid(probs: list[float], outcomes: list[int], points: int = 20001) -> float:
    """The T of least NLL of sigmoid(logit(p)/T) on a log grid over fit_temperature's documented range [T_MIN, T_MAX]
    (steps of 0.04%), by numpy: a known answer for fit_temperature."""
    from labelers.metrics import T_MAX, T_MIN

    p = np.clip(np.asarray(probs, float), 1e-9, 1 - 1e-9)
    y = np.asarray(outcomes, float)[:, None]
    grid = np.exp(np.linspace(math.log(T_MIN), math.log(T_MAX), points))
    z = np.log(p / (1 - p))[:, None] / grid
    return float(grid[np.argmin((np.logaddexp(0, z) - y * z).sum(axis=0))])


def _draws(t_star: float, n: int = 6000, seed: int = 11) -> tuple[list[float], list[int]]:
    """probs = sigmoid(logit), logits uniform on [-6, 6]; outcomes ~ Bernoulli(sigmoid(logit / T*)).
    The logits and uniforms do not depend on T*, so only the outcomes tell T* = 0.5 from T* = 3."""
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-6, 6, n)
    u = rng.random(n)
    return [sigmoid(x) for x in logits], [int(ui < sigmoid(x / t_star)) for x, ui in zip(logits, u)]


@pytest.mark.parametrize("t_star", [0.5, 3.0])
def test_fit_temperature_recovers_the_temperature_the_outcomes_were_drawn_with(t_star):
    from labelers.metrics import fit_temperature

    probs, outcomes = _draws(t_star)
    assert fit_temperature(probs, outcomes) == pytest.approx(t_star, rel=0.1)


def test_fit_temperature_is_the_maximum_likelihood_t():
    from labelers.metrics import fit_temperature

    probs = [0.9, 0.8, 0.7, 0.6, 0.35, 0.2, 0.1, 0.95, 0.55, 0.3]
    outcomes = [1, 1, 0, 1, 0, 0, 1, 1, 0, 0]
    t = fit_temperature(probs, outcomes)
    assert 0.2 < t < 20 and t == pytest.approx(temperature_by_grid(probs, outcomes), rel=1e-3)
    # one logit magnitude, a share c of outcomes on p's side: sigmoid(|logit p| / T) = c, T = log(99) / log(4) for p = .99, c = .8
    assert fit_temperature([0.99] * 80 + [0.01] * 20, [1] * 72 + [0] * 8 + [0] * 8 + [1] * 12) == pytest.approx(math.log(99) / math.log(4), rel=1e-4)


def test_fit_temperature_at_the_edges_of_its_range():
    """Documented: a perfectly separable gold set gives T_MIN (as sharp as allowed); all outcomes against p, or every p 1/2, give T_MAX."""
    from labelers.metrics import T_MAX, T_MIN, fit_temperature

    probs = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.1, 0.55]
    agree = [int(p > 0.5) for p in probs]
    assert fit_temperature(probs, agree) == pytest.approx(T_MIN, rel=1e-9)
    assert fit_temperature(probs, [1 - y for y in agree]) == pytest.approx(T_MAX, rel=1e-9)
    assert fit_temperature([0.5] * 4, [1, 0, 1, 1]) == pytest.approx(T_MAX, rel=1e-9)
    assert temperature_by_grid(probs, agree) == pytest.approx(T_MIN) and temperature_by_grid(probs, [1 - y for y in agree]) == pytest.approx(T_MAX)
    # one outcome against its p: no longer separable, an interior T
    t = fit_temperature(probs, [1 - agree[0], *agree[1:]])
    assert T_MIN * 1.5 < t < T_MAX / 2 and t == pytest.approx(temperature_by_grid(probs, [1 - agree[0], *agree[1:]]), rel=1e-3)
