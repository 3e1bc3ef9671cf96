"""Reward-model trainer on a tiny BERT built from a config (no hub)."""

import math

import pytest
import torch

from trainers.reward_config import RewardConfig
from trainers.reward_trainer import RewardTrainer, hard_bt_loss, select_pairs, soft_bt_loss


def test_soft_label_loss_hand_computed():
    r_a, r_b, p = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.8, 0.3])
    s = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(1.0))]
    expected = -((0.8 * math.log(s[0]) + 0.2 * math.log(1 - s[0])) + (0.3 * math.log(s[1]) + 0.7 * math.log(1 - s[1]))) / 2
    assert float(soft_bt_loss(r_a, r_b, p)) == pytest.approx(expected, rel=1e-6)
    assert float(hard_bt_loss(torch.tensor([1.0]), torch.tensor([0.0]), 0.5)) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)


def _tiny():
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aifeedback.models import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1, max_position_embeddings=128)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg), tok


def _rows(n=32, start=0):
    rows = []
    for i in range(start, start + n):
        good, bad = f"Sure, here is a kind and correct answer number {i}.", f"No. Go away {i}."
        a_good = i % 2 == 0
        rows.append(
            {
                "messages": [{"role": "user", "content": f"question {i}"}],
                "response_a": good if a_good else bad,
                "response_b": bad if a_good else good,
                "p_a": 0.9 if a_good else 0.1,
                "hard_label": "A" if a_good else "B",
                "confidence": 0.8 if i % 4 else 0.1,
                "consistent": i % 3 != 0,
                "human": "A" if a_good else "B",
            }
        )
    return rows


@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_loss_goes_down_and_parameters_change(labels, tmp_path):
    model, tok = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    tr = RewardTrainer(RewardConfig(labels=labels, epochs=6, lr=1e-3, batch_size=8, max_length=32), model, tok)
    train, held_out = _rows(), _rows(8, start=1000)  # held-out pairs: new questions and responses, never trained on
    seen = {(r["messages"][0]["content"], r["response_a"], r["response_b"]) for r in train}
    assert not seen & {(r["messages"][0]["content"], r["response_a"], r["response_b"]) for r in held_out}
    res = tr.train(train, eval_rows=held_out)
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert res.n_eval == 8 and res.eval_accuracy is not None and res.eval_accuracy >= 0.75
    out = tr.save(tmp_path / "rm", res, {"labels_from": "test"})
    assert (out / "config.json").is_file() and "held-out human-label accuracy" in (out / "README.md").read_text()


def test_filters_count_what_they_drop():
    kept, dropped = select_pairs(_rows(), RewardConfig(min_confidence=0.5, consistency="drop_inconsistent"))
    assert len(kept) + sum(dropped.values()) == 32
    # 11 pairs are inconsistent (i % 3 == 0); 8 have confidence 0.1 (i % 4 == 0), 3 of them already counted as inconsistent
    assert dropped == {"inconsistent": 11, "consistency_unknown": 0, "below_min_confidence": 5} and all(r["consistent"] for r in kept)
    kept, dropped = select_pairs([*_rows(4), dict(_rows(1)[0], p_a=0.5, hard_label="tie")], RewardConfig(labels="hard"))
    assert len(kept) == 4 and dropped["tie"] == 1  # soft labels keep a tie (p = 0.5 is a target); hard labels cannot


# A training run killed with SIGKILL inside its 15th step (of 2 epochs x 10): the script is the test's, the kill is real.
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.test_reward_trainer import _resume_setup
from trainers.reward_trainer import RewardTrainer

tr, rows, gold, ckpt = _resume_setup(sys.argv[2])
calls = 0
real = RewardTrainer._batch_loss

def dying(self, batch, weight):
    global calls
    calls += 1
    if calls == 15:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch, weight)

RewardTrainer._batch_loss = dying
tr.train(rows, gold_rows=gold, checkpoint_dir=ckpt)
"""


def _resume_setup(folder: str, lr: float = 1e-3):
    """A tiny BERT (dropout on, so the RNG state matters), 40 pairs, batch 4, 2 epochs with early stopping, a checkpoint every 3 steps."""
    from pathlib import Path

    model, tok = _tiny()
    cfg = RewardConfig(epochs=2, lr=lr, batch_size=4, max_length=32, early_stopping=True, checkpoint_every=3)
    return RewardTrainer(cfg, model, tok), _rows(40), _rows(8, start=500), Path(folder) / "checkpoint"


@pytest.mark.slow  # a subprocess imports torch and transformers
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """kill -9 in step 15 leaves the checkpoint of step 12 (epoch 2, batch 3 of 10); the rerun resumes there and ends bitwise
    where a run never interrupted ends (same order, RNG, optimiser moments, gold curve and best epoch); save() removes the checkpoint."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    whole, rows, gold, _ = _resume_setup(str(tmp_path / "whole"))
    ref = whole.train(rows, gold_rows=gold)  # no checkpoint_dir: no checkpoints
    assert ref.resumed_from_step is None and not (tmp_path / "whole").exists()

    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(repo), str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["offset"], len(state["gold_curve"])) == (12, 1, 8, 1)

    tr, rows, gold, ckpt = _resume_setup(str(tmp_path / "run"))
    res = tr.train(rows, gold_rows=gold, checkpoint_dir=ckpt)
    assert res.resumed_from_step == 12 and len(res.losses) == 20
    assert res.losses == ref.losses and res.gold_curve == ref.gold_curve and res.best_epoch == ref.best_epoch
    theirs = whole.model.state_dict()
    for name, tensor in tr.model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    out = tr.save(tmp_path / "run", res)
    assert not ckpt.exists() and "resumed from a checkpoint at step 12" in (out / "README.md").read_text()


def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    from aifeedback.errors import InputError

    tr, rows, gold, ckpt = _resume_setup(str(tmp_path))
    tr.cfg = tr.cfg.model_copy(update={"epochs": 1})
    tr.train(rows, gold_rows=gold, checkpoint_dir=ckpt)  # the checkpoint at the end of its only epoch stays until save()
    assert (ckpt / "state.pt").is_file()
    other, rows, gold, ckpt = _resume_setup(str(tmp_path), lr=2e-3)
    with pytest.raises(InputError, match="delete .*checkpoint to start over"):
        other.train(rows, gold_rows=gold, checkpoint_dir=ckpt)
