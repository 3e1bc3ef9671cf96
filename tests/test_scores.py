"""Known-answer tests of the label arithmetic."""

import math

import pytest

from labelers.scores import apply_temperature, bradley_terry, calibrate, expected_score, hard_label, normalised_reward, p_greater, position_preferred


def test_expected_score_and_reward():
    cands = [str(i) for i in range(1, 11)]
    probs = [0.0] * 10
    probs[6] = 0.5  # "7"
    probs[8] = 0.5  # "9"
    assert expected_score(probs, cands) == pytest.approx(8.0)
    assert normalised_reward(1.0) == -1 and normalised_reward(10.0) == 1 and normalised_reward(5.5) == pytest.approx(0.0)


def test_p_greater():
    assert p_greater([0, 1], [1, 0]) == 1.0
    assert p_greater([1, 0], [0, 1]) == 0.0
    assert p_greater([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.5)
    # A in {1,2,3} uniform, B always 2: P(A>B)=1/3, P(tie)=1/3 -> 0.5
    assert p_greater([1 / 3] * 3, [0, 1, 0]) == pytest.approx(0.5)
    assert p_greater([0, 0, 1], [0.5, 0.5, 0]) == pytest.approx(1.0)


def test_calibrate_divides_out_the_prior():
    # a labeler that says "1" 90% of the time on content-free input, and 80% here
    assert calibrate([0.8, 0.2], [0.9, 0.1]) == pytest.approx([0.8 / 0.9 / (0.8 / 0.9 + 2.0), 2.0 / (0.8 / 0.9 + 2.0)])
    assert calibrate([0.5, 0.5], [0.5, 0.5]) == pytest.approx([0.5, 0.5])


def test_temperature():
    assert apply_temperature(0.5, 3.0) == pytest.approx(0.5)
    p = apply_temperature(0.9, 2.0)
    assert p == pytest.approx(1 / (1 + math.exp(-math.log(9) / 2)))
    assert apply_temperature(0.7, 1.0) == 0.7


def test_hard_label_and_position():
    assert hard_label(0.52, 0.05) == "tie" and hard_label(0.6, 0.05) == "A" and hard_label(0.3, 0.05) == "B"
    assert position_preferred(0.9, 0.2) == "first"  # A won when first, lost when second
    assert position_preferred(0.2, 0.9) == "second"
    assert position_preferred(0.8, 0.7) is None


def test_bradley_terry_orders_items():
    # item 0 beats 1 and 2 most of the time; 1 beats 2
    wins = [(0, 1, 0.9), (0, 2, 0.95), (1, 2, 0.8)]
    s = bradley_terry(3, wins)
    assert s[0] > s[1] > s[2]
    assert sum(s) == pytest.approx(0.0, abs=1e-9)
    # two items: P(0 beats 1) = sigmoid(s0 - s1) recovers the win rate (up to the small prior)
    s = bradley_terry(2, [(0, 1, 0.75)])
    assert 1 / (1 + math.exp(-(s[0] - s[1]))) == pytest.approx(0.75, abs=0.01)


def test_rankings_and_binary_view():
    from labelers.views import binary_view, rankings

    base = {"messages": [{"role": "user", "content": "q"}], "labeler_model": "m", "template_version": "t"}
    rows = [
        {**base, "pair_id": "1", "prompt_id": "p", "response_a": "x", "response_b": "y", "p_a": 0.9, "hard_label": "A", "confidence": 0.8, "score_a": None, "score_b": None},
        {**base, "pair_id": "2", "prompt_id": "p", "response_a": "x", "response_b": "z", "p_a": 0.8, "hard_label": "A", "confidence": 0.6, "score_a": None, "score_b": None},
        {**base, "pair_id": "3", "prompt_id": "p", "response_a": "y", "response_b": "z", "p_a": 0.3, "hard_label": "B", "confidence": 0.4, "score_a": None, "score_b": None},
    ]
    ranks = rankings(rows)
    assert [r["response"] for r in sorted(ranks, key=lambda r: r["rank"])] == ["x", "z", "y"]
    kto = binary_view(rows, min_confidence=0.5)
    assert len(kto) == 4 and sum(r["label"] for r in kto) == 2
    point = [{**rows[0], "score_a": 9.0, "score_b": 2.0}]
    kto = binary_view(point, threshold=0.0)
    assert [r["label"] for r in kto] == [True, False] and kto[0]["reward"] == pytest.approx(2 * 8 / 9 - 1)


def test_agreement_metrics_known_answers():
    from labelers.metrics import accuracy, bootstrap_ci, cohen_kappa, coverage_curve, ece, fit_temperature, pairwise_human_agreement, position_stats, prefers_longer

    assert accuracy(["A", "B", "A", "A"], ["A", "B", "B", "A"]) == 0.75
    lo, hi = bootstrap_ci(["A"] * 80 + ["B"] * 20, ["A"] * 100)
    assert lo < 0.8 < hi and 0.7 < lo and hi < 0.9
    # kappa: po=0.75, pe=0.5*0.75+0.5*0.25=0.5 -> 0.5
    assert cohen_kappa(["A", "A", "B", "B"], ["A", "A", "A", "B"]) == pytest.approx(0.5)
    assert pairwise_human_agreement([["A", "A", "B"], ["B", "B", "B"]]) == pytest.approx((1 + 3) / 6)
    st = position_stats([{"p_ab": 0.9, "p_ba": 0.2}, {"p_ab": 0.8, "p_ba": 0.7}, {"p_ab": 0.3, "p_ba": 0.6}])
    assert st["consistency"] == pytest.approx(1 / 3) and st["first_position_won_both"] == pytest.approx(1 / 3)
    assert st["same_position_preferred"] == pytest.approx(2 / 3)
    assert st["first_position_preference"] == pytest.approx((2 + 1 + 0) / 6)
    assert prefers_longer(["A", "B", "A", "tie"], [10, 10, 5, 1], [5, 20, 5, 2]) == 1.0
    e, bins = ece([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0])
    assert e == pytest.approx(0.15)
    assert sum(b["n"] for b in bins) == 4
    # an over-confident labeler gets T > 1: one |logit|, log 99, and 80 of 100 outcomes on p's side, so the
    # maximum-likelihood T has sigmoid(log(99) / T) = 0.8, T = log(99) / log(4) = 3.31
    probs = [0.99] * 70 + [0.01] * 30
    outcomes = [1] * 60 + [0] * 10 + [0] * 20 + [1] * 10
    assert fit_temperature(probs, outcomes) == pytest.approx(math.log(99) / math.log(4), rel=1e-4)
    cov = coverage_curve([0.9, 0.6, 0.2, 0.5], ["A", "A", "B", "tie"], ["A", "B", "B", "A"], steps=2)
    assert cov[0]["coverage"] == 0.5 and cov[0]["agreement"] == 1.0 and cov[1]["agreement"] == 0.5
