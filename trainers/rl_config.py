"""Configs of the RL (GRPO) and DPO trainers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aifeedback.config import StrictModel
from aifeedback.models import DEFAULT_LABELER, DEFAULT_POLICY
from aifeedback.preference import ConsistencyFilter, MinConfidence


class RLConfig(StrictModel):
    policy: str = Field(DEFAULT_POLICY, description="Policy to train: embedded SmolLM2, a local folder or a Hugging Face id.")
    reward: Literal["rm", "direct"] = Field("direct", description="rm: a trained reward model (distilled RLAIF); direct: the labeler's 1-10 score, sum_i i*P(i) normalised to [-1, 1] (direct RLAIF).")
    reward_model: str | None = Field(None, description="rm: the folder written by `aifeedback train-rm`.")
    labeler: str = Field(DEFAULT_LABELER, description="direct: the labeler model scoring completions.")
    kl_beta: float = Field(0.04, ge=0, description="KL penalty to the reference policy.")
    num_generations: int = Field(2, ge=2, description="Completions per prompt (the GRPO group).")
    max_completion_length: int = Field(24, ge=1, description="Most tokens per completion.")
    batch_size: int = Field(2, ge=1, description="Prompts per device step.")
    max_steps: int = Field(4, ge=1, description="Optimiser steps.")
    lr: float = Field(1e-6, gt=0, description="Learning rate.")
    seed: int = Field(0, ge=0, description="Seed.")

    @model_validator(mode="after")
    def _reward_model_for_rm(self) -> RLConfig:
        if self.reward == "rm" and not self.reward_model:
            raise ValueError("reward rm needs `reward_model`: the folder written by `aifeedback train-rm`")
        return self


class DPOTrainConfig(StrictModel):
    policy: str = Field(DEFAULT_POLICY, description="Policy to train.")
    beta: float = Field(0.1, gt=0, description="DPO beta.")
    soft_labels: Literal["none", "smoothing"] = Field("smoothing", description="smoothing: label_smoothing = mean over pairs of min(p, 1-p), the labeler's expected flip rate; none: treat labels as certain.")
    min_confidence: MinConfidence = 0.0
    consistency: ConsistencyFilter = "any"
    epochs: float = Field(1.0, gt=0, description="Epochs over the pairs.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    batch_size: int = Field(2, ge=1, description="Pairs per device step.")
    max_length: int = Field(384, ge=16, description="Most tokens of prompt + response.")
    lr: float = Field(5e-6, gt=0, description="Learning rate.")
    seed: int = Field(0, ge=0, description="Seed.")
