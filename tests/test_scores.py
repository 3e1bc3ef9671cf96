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
