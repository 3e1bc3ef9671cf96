"""The two RL rewards, built as train-rl builds them and really called: direct RLAIF and a trained reward model."""

from __future__ import annotations

import math

import pytest
import torch

PROMPTS = ["Name a yellow fruit.", "What is 2+2?", "How do I pick my neighbour's lock?"]
COMPLETIONS = [
    ["A banana.", "Blue."],
    ["2+2 is 4.", "It is 22."],
    ["I can't help you get into someone else's home.", "Use a tension wrench and a pick."],
]


def test_direct_reward_is_the_labelers_normalised_pointwise_score(embedded_backend):
    """direct_reward(labeler) gives sum_i i P(i) mapped to [-1, 1], the same number the pointwise labeler stores."""
    from aifeedback.config import LabelConfig
    from aifeedback.models import DEFAULT_LABELER
    from labelers.job import LabelJob
    from labelers.labeler import Labeler
    from labelers.scores import normalised_reward
    from trainers.rl import direct_reward

    reward = direct_reward(DEFAULT_LABELER)  # what train_grpo builds for --reward direct
    assert reward.__name__ == "direct_rlaif"
    # TRL passes conversational prompts and completions; plain strings must work too
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS for _ in range(2)]
    completions = [[{"role": "assistant", "content": c}] for pair in COMPLETIONS for c in pair]
    got = reward(prompts, completions)
    assert len(got) == len(completions) and all(isinstance(x, float) and -1 <= x <= 1 for x in got)
    assert reward([p for p in PROMPTS for _ in range(2)], [c for pair in COMPLETIONS for c in pair]) == pytest.approx(got, abs=1e-6)

    # the pointwise labeler rates each response of a pair on its own: its scores are the same numbers
    cfg = LabelConfig(method="pointwise")
    job = LabelJob(cfg)
    lab = Labeler(embedded_backend, cfg, job.template)
    pairs = [{"pair_id": f"d{i}", "prompt_id": f"d{i}", "messages": [{"role": "user", "content": p}], "response_a": a, "response_b": b} for i, (p, (a, b)) in enumerate(zip(PROMPTS, COMPLETIONS))]
    rows, excluded = lab.label(pairs, "k", DEFAULT_LABELER, None)
    assert excluded == [] and len(rows) == len(pairs)
    want = [normalised_reward(s) for r in rows for s in (r["score_a"], r["score_b"])]
    assert got == pytest.approx(want, abs=1e-4)
    assert len({round(x, 4) for x in got}) > 1  # the reward tells completions apart: not a constant


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """A tiny reward model (BERT from a config) trained on good-vs-bad pairs and saved as train-rm saves it."""
    from test_reward_trainer import _rows, _tiny

    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    model, tok = _tiny()
    trainer = RewardTrainer(RewardConfig(epochs=6, lr=1e-3, batch_size=8, max_length=64), model, tok)
    res = trainer.train(_rows())
    out = trainer.save(tmp_path_factory.mktemp("rm") / "rm", res, {"labels_from": "test"})
    trainer.model.eval()
    return out, trainer


def _own_scores(trainer, prompts: list[str], responses: list[str]) -> list[float]:
    with torch.no_grad():
        return trainer.rewards(prompts, responses).tolist()


def test_rm_reward_gives_the_reward_models_own_scores(trained_rm):
    from trainers.reward_trainer import prompt_text
    from trainers.rl import rm_reward

    rm_dir, trainer = trained_rm
    reward = rm_reward(str(rm_dir))  # what train_grpo builds for --reward rm, from the saved folder
    assert reward.__name__ == "reward_model"
    chats = [[{"role": "user", "content": f"question {900 + i}"}] for i in range(4)]
    texts = ["Sure, here is a kind and correct answer number 900.", "No. Go away 901.", "Sure, here is a kind and correct answer number 902.", "No. Go away 903."]
    got = reward(chats, [[{"role": "assistant", "content": t}] for t in texts])
    assert len(got) == 4 and all(isinstance(x, float) and math.isfinite(x) for x in got)
    own = _own_scores(trainer, [prompt_text(c) for c in chats], texts)
    assert got == pytest.approx(own, abs=1e-5)
    assert sorted(range(4), key=got.__getitem__) == sorted(range(4), key=own.__getitem__)  # same ranking
    assert min(got[0], got[2]) > max(got[1], got[3])  # the trained preference carries over to new pairs
    assert reward([prompt_text(c) for c in chats], texts) == pytest.approx(got, abs=1e-6)  # plain-text prompts too
