"""RL on AI feedback through TRL's GRPOTrainer (KL penalty to the reference policy via beta), and DPO.

Rewards are plain functions, as TRL takes them: the direct-RLAIF reward is the
labeler's pointwise score (sum_i i*P(i) over "1".."10", normalised to [-1, 1]);
the distilled-RLAIF reward is a trained reward model's output.
"""

from __future__ import annotations

from collections.abc import Callable

from aifeedback.errors import ConfigError
from aifeedback.preference import select, trl_pair

from .rl_config import DPOTrainConfig, RLConfig


def _text(msgs) -> str:
    return msgs if isinstance(msgs, str) else (msgs[-1]["content"] if msgs else "")


def direct_reward(labeler_model: str) -> Callable:
    """Direct RLAIF: the labeler rates each completion 1-10; the reward is the normalised expected score."""
    from aifeedback.config import BackendConfig
    from aifeedback.stage import cached_backend
    from labelers.labeler import pointwise_rewards
    from labelers.templates import load_template

    backend = cached_backend(BackendConfig(model=labeler_model))
    template = load_template("pointwise")

    def reward(prompts, completions, **kwargs) -> list[float]:
        items = [(p if isinstance(p, list) else [{"role": "user", "content": p}], _text(c)) for p, c in zip(prompts, completions)]
        return [0.0 if r is None else r for r in pointwise_rewards(backend, template, items)]

    reward.__name__ = "direct_rlaif"
    return reward


def rm_reward(model_dir: str) -> Callable:
    """Distilled RLAIF: rewards from a reward model trained by `aifeedback train-rm`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .reward_trainer import prompt_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(dev).eval()

    def reward(prompts, completions, **kwargs) -> list[float]:
        ps = [prompt_text(p) if isinstance(p, list) else p for p in prompts]
        enc = tok(ps, [_text(c) for c in completions], truncation="longest_first", max_length=256, padding=True, return_tensors="pt").to(dev)
        with torch.no_grad():
            return model(**enc).logits.squeeze(-1).tolist()

    reward.__name__ = "reward_model"
    return reward


def load_policy(model_id: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aifeedback.models import resolve

    path = resolve(model_id).path
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tok


def _trl_args(out_dir: str, lr: float, seed: int) -> dict:
    """Arguments every TRL trainer here shares: a GPU with bf16 mixed precision when present, else CPU fp32;
    no hub, no checkpoints, a log line per step."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(output_dir=out_dir, use_cpu=not cuda, report_to=[], logging_steps=1, save_strategy="no", bf16=cuda and torch.cuda.is_bf16_supported(), learning_rate=lr, seed=seed)


def train_grpo(cfg: RLConfig, prompts: list[list[dict]], out_dir: str, reward_fn: Callable | None = None, model=None, tokenizer=None) -> dict:
    """A few GRPO steps; returns the reward curve (mean reward per logged step) and the trainer state."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if reward_fn is None:
        if cfg.reward == "direct":
            reward_fn = direct_reward(cfg.labeler)
        else:
            if not cfg.reward_model:
                raise ConfigError("`reward` rm needs `reward_model`: the folder written by `aifeedback train-rm`")
            reward_fn = rm_reward(cfg.reward_model)
    if model is None:
        model, tokenizer = load_policy(cfg.policy)
    args = GRPOConfig(
        **_trl_args(out_dir, cfg.lr, cfg.seed),
        beta=cfg.kl_beta,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        per_device_train_batch_size=cfg.batch_size * cfg.num_generations,  # completions per step: prompts x group size
        max_steps=cfg.max_steps,
    )
    ds = Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"reward_curve": [h["reward"] for h in logs], "kl": [h.get("kl") for h in logs], "steps": trainer.state.global_step, "trainer": trainer}


def dpo_dataset(label_rows: list[dict], cfg: DPOTrainConfig) -> tuple[list[dict], float]:
    """TRL conversational columns from label rows (ties left out, then aifeedback.preference.select); returns (rows, label_smoothing)."""
    decided = [r for r in label_rows if trl_pair(r) is not None]  # None for a tie: the one definition (aifeedback/preference.py)
    rows, flips = [], []
    for r in select(decided, cfg.min_confidence, cfg.consistency)[0]:
        pair = trl_pair(r)
        flips.append(1 - pair["p_chosen"])
        rows.append({k: pair[k] for k in ("prompt", "chosen", "rejected")})
    smoothing = (sum(flips) / len(flips)) if (flips and cfg.soft_labels == "smoothing") else 0.0
    return rows, min(smoothing, 0.49)


def train_dpo(cfg: DPOTrainConfig, rows: list[dict], out_dir: str, label_smoothing: float = 0.0, model=None, tokenizer=None) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if model is None:
        model, tokenizer = load_policy(cfg.policy)
    args = DPOConfig(
        **_trl_args(out_dir, cfg.lr, cfg.seed),
        beta=cfg.beta,
        label_smoothing=label_smoothing,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        max_length=cfg.max_length,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "steps": trainer.state.global_step, "label_smoothing": label_smoothing, "trainer": trainer}
