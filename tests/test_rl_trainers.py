"""GRPO and DPO through TRL on a tiny Llama built from a config (no hub), with the embedded tokenizer."""

import pytest
import torch

from trainers.rl import dpo_dataset, train_dpo, train_grpo
from trainers.rl_config import DPOTrainConfig, RLConfig


def _tiny_llama(tmp_path=None):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aifeedback.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if tmp_path is not None:  # TRL builds the KL reference model from the policy's folder
        model.save_pretrained(tmp_path / "tiny")
        tok.save_pretrained(tmp_path / "tiny")
        model = LlamaForCausalLM.from_pretrained(tmp_path / "tiny")
    return model, tok


def test_grpo_steps_change_the_policy_with_the_reward_model_as_reward(tmp_path, tiny_rm):
    """--reward rm: train_grpo builds rm_reward from the saved folder itself, and TRL scores every completion with it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trainers.reward_trainer import prompt_text

    rm_dir = tiny_rm(0)
    model, tok = _tiny_llama(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    prompts = [[{"role": "user", "content": f"Say something short {i}."}] for i in range(4)]
    cfg = RLConfig(reward="rm", reward_model=str(rm_dir), max_steps=2, max_completion_length=8, lr=1e-3, batch_size=2)
    out = train_grpo(cfg, prompts, str(tmp_path / "grpo"), model=model, tokenizer=tok)
    assert out["steps"] == 2 and len(out["reward_curve"]) == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    trainer = out["trainer"]
    assert [f.__name__ for f in trainer.reward_funcs] == ["reward_model"]
    # the rewards TRL recorded for the last step's completions are the reward model's own scores
    logged = trainer._logs  # TRL keeps the last generation batch: prompts, completions and each reward function's values
    seen, rewards = list(logged["completion"]), list(logged["rewards"]["reward_model"])
    assert len(seen) == len(rewards) == cfg.batch_size * cfg.num_generations
    rm_tok = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in seen]
    enc = rm_tok([prompt_text(p) for p in logged["prompt"]], texts, truncation="longest_first", max_length=256, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = rm(**enc).logits.squeeze(-1).tolist()
    assert rewards == pytest.approx(own, abs=1e-4)


def test_dpo_loss_goes_down_and_soft_labels_smooth(tmp_path):
    model, tok = _tiny_llama(tmp_path)
    label_rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "response_a": "Good helpful answer.", "response_b": "bad", "p_a": 0.8, "hard_label": "A", "confidence": 0.6}
        for i in range(4)
    ] + [{"messages": [{"role": "user", "content": "q"}], "response_a": "x", "response_b": "y", "p_a": 0.5, "hard_label": "tie", "confidence": 0.0}]
    rows, smoothing = dpo_dataset(label_rows, DPOTrainConfig())
    assert len(rows) == 4 and smoothing == pytest.approx(0.2)
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}
    before = [p.detach().clone() for p in model.parameters()]
    out = train_dpo(DPOTrainConfig(max_steps=6, lr=1e-3, batch_size=2, max_length=64), rows, str(tmp_path), smoothing, model=model, tokenizer=tok)
    assert out["steps"] == 6
    assert out["losses"][-1] < out["losses"][0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
