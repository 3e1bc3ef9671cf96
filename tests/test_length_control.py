"""length_control=residual: the judge's length effect is fitted on the soft labels and removed from the training targets.

Known answers on synthetic pairs whose label is built from a known length effect k (and, in one set, a known content
signal): the fit recovers k, the residual targets carry no length signal and keep the content signal.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from aifeedback.config import build_config
from aifeedback.errors import ConfigError
from trainers.reward_config import RewardConfig
from trainers.reward_trainer import fit_length_effect, residual_targets

K = 2.5  # the known length effect, in logits at tanh(delta / s) = 1


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def corr(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    sa, sb = math.sqrt(sum((x - ma) ** 2 for x in a)), math.sqrt(sum((y - mb) ** 2 for y in b))
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb) if sa and sb else 0.0


def pairs(n: int = 2000, k: float = K, content: float = 0.0, seed: int = 0) -> tuple[list[dict], list[int], list[int]]:
    """Pairs with random lengths (20..800 characters) and p_a = sigmoid(k * tanh(delta / s) + content * c), c = +-1 at
    random, independent of length; s is the root mean square of delta. Returns (rows, delta, c)."""
    rng = random.Random(seed)
    lengths = [(rng.randint(20, 800), rng.randint(20, 800)) for _ in range(n)]
    delta = [a - b for a, b in lengths]
    s = math.sqrt(sum(d * d for d in delta) / n)
    c = [rng.choice((-1, 1)) for _ in range(n)]
    text = "the answer goes on " * 50
    rows = [
        {"pair_id": str(i), "messages": [{"role": "user", "content": f"q {i}"}], "response_a": text[:a], "response_b": text[:b], "p_a": sigmoid(k * math.tanh(d / s) + content * ci)}
        for i, ((a, b), d, ci) in enumerate(zip(lengths, delta, c))
    ]
    return rows, delta, c


def swapped(row: dict) -> dict:
    return {**row, "response_a": row["response_b"], "response_b": row["response_a"], "p_a": 1 - row["p_a"]}


def test_pure_length_labels_leave_no_length_signal():
    rows, delta, _ = pairs()
    fit = fit_length_effect(rows)
    assert fit.beta1 == pytest.approx(K, rel=0.05)
    assert fit.scale == pytest.approx(math.sqrt(sum(d * d for d in delta) / len(delta)))  # s: root mean square of delta, in characters
    assert corr([r["p_a"] for r in rows], delta) > 0.9  # the judge's labels are all length
    targets = [r["p_a"] for r in residual_targets(rows, fit)]
    assert max(abs(p - 0.5) for p in targets) < 0.02
    assert max(targets) - min(targets) < 1e-9  # constant targets: no length signal left (a correlation of rounding noise means nothing)


def test_content_signal_survives_and_length_does_not():
    rows, delta, c = pairs(content=1.5, seed=1)
    fit = fit_length_effect(rows)
    assert fit.beta1 == pytest.approx(K, rel=0.05)  # content independent of length does not bias the fit
    judge = [r["p_a"] for r in rows]
    out = residual_targets(rows, fit)
    targets = [r["p_a"] for r in out]
    assert corr(judge, delta) > 0.6 and abs(corr(targets, delta)) < 0.05
    assert corr(targets, c) > 0.95
    assert all(r["p_a_judge"] == p for r, p in zip(out, judge))  # the judge's own label is kept beside the target


def test_swapping_a_and_b_changes_nothing():
    rows, _, _ = pairs(content=1.0, seed=2)
    fit = fit_length_effect(rows)
    rng = random.Random(3)
    flip = [rng.random() < 0.5 for _ in rows]
    half = [swapped(r) if f else r for r, f in zip(rows, flip)]
    for other in (half, [swapped(r) for r in rows]):
        fit2 = fit_length_effect(other)
        assert fit2.beta1 == pytest.approx(fit.beta1, rel=1e-9) and fit2.scale == pytest.approx(fit.scale, rel=1e-12)
    for r, r2, f in zip(residual_targets(rows, fit), residual_targets(half, fit_length_effect(half)), flip):
        assert r2["p_a"] == pytest.approx(1 - r["p_a"] if f else r["p_a"], abs=1e-9)


def test_equal_lengths_keep_the_labels():
    rows = [{"response_a": "same", "response_b": "four", "p_a": p} for p in (0.0, 0.3, 0.9, 1.0)]
    fit = fit_length_effect(rows)
    assert (fit.beta1, fit.scale) == (0.0, 0.0)
    assert [r["p_a"] for r in residual_targets(rows, fit)] == [0.0, 0.3, 0.9, 1.0]


def test_hard_labels_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="set labels=soft, or keep labels=hard and control length with length_balance=true or length_head=true"):
        build_config(RewardConfig, None, {"labels": "hard", "length_control": "residual"})
    assert build_config(RewardConfig, None, {"length_control": "residual"}).length_control == "residual"
    with pytest.raises(ConfigError, match="length_control: Input should be 'none' or 'residual'"):
        build_config(RewardConfig, None, {"length_control": "yes"})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_trains_on_the_residual_and_saves_the_fit(tmp_path):
    """A tiny BERT (built from a config) trained 3 steps: the loss sees the residual targets, and the fit is saved."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aifeedback.models import minilm_dir
    from trainers.reward_trainer import RewardTrainer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    rows, _, _ = pairs(n=48, seed=4)
    seen: dict[str, list[float]] = {}
    for control in ("none", "residual"):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1, max_position_embeddings=256))
        tr = RewardTrainer(RewardConfig(length_control=control, batch_size=16, max_length=64, max_steps=3, lr=1e-3), model, tok)
        batch_loss = tr._batch_loss
        seen[control] = []

        def spy(batch, weight, _loss=batch_loss, _seen=seen[control]):
            _seen.extend(float(r["p_a"]) for r in batch)
            return _loss(batch, weight)

        tr._batch_loss = spy
        res = tr.train(rows)
        out = tr.save(tmp_path / control, res)
    assert max(abs(p - 0.5) for p in seen["residual"]) < 0.02  # every target the loss saw is length-free
    assert max(abs(p - 0.5) for p in seen["none"]) > 0.3  # the control: the judge's own labels
    saved = json.loads((out / "aifeedback_length_control.json").read_text())
    assert saved["beta1"] == pytest.approx(fit_length_effect(rows).beta1) and saved["beta1"] == pytest.approx(K, rel=0.05)
    assert saved["measure"] == "characters" and saved["scale"] > 0 and saved["n_pairs"] == 48
    assert "length control" in (out / "README.md").read_text() and json.loads((out / "aifeedback_reward_config.json").read_text())["length_control"] == "residual"
    assert not (tmp_path / "none" / "aifeedback_length_control.json").exists()


def test_near_certain_verdicts_are_clipped_at_eps():
    """A judge that says 0.0001 or 0.9999 counts as log-odds of -/+ log(99) at eps 0.01 (not -/+ 9.2): beta1 by hand."""
    text = "x" * 400
    lens = [(300, 100), (100, 300), (250, 150), (200, 200), (400, 0)]
    ps = [0.9999, 0.0001, 0.7, 0.5, 0.9999]
    rows = [{"response_a": text[:a], "response_b": text[:b], "p_a": p} for (a, b), p in zip(lens, ps)]
    d = [a - b for a, b in lens]
    s = math.sqrt(sum(x * x for x in d) / len(d))
    xs = [math.tanh(x / s) for x in d]
    y = [math.log(99), -math.log(99), math.log(0.7 / 0.3), 0.0, math.log(99)]
    want = sum(a * b for a, b in zip(xs, y)) / sum(x * x for x in xs)
    fit = fit_length_effect(rows, eps=0.01)
    assert fit.beta1 == pytest.approx(want, rel=1e-12) and fit.eps == 0.01
    assert fit_length_effect(rows, eps=1e-6).beta1 > 1.8 * want  # unclipped, the two near-certain verdicts weigh twice as much
    out = residual_targets(rows, fit)
    assert out[0]["p_a"] == pytest.approx(1 / (1 + math.exp(-(math.log(99) - want * xs[0]))), rel=1e-12)
