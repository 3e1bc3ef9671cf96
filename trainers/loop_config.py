"""Config of `aifeedback loop`: iterative online RLAIF (documented once, here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from aifeedback.config import LabelConfig, StrictModel
from aifeedback.models import DEFAULT_POLICY


class LoopConfig(StrictModel):
    policy: str = Field(DEFAULT_POLICY, description="Initial policy: embedded SmolLM2, a local folder or a Hugging Face id. Iteration k trains from iteration k-1's policy.")
    prompts: str | None = Field(None, description="Prompts file (JSONL, JSON list, CSV, Parquet). Self-instruct rows (instruction + instances[0].input) are read as such; otherwise prompt_column.")
    prompt_column: str = Field("prompt", description="Column with the prompt text or chat messages (files that are not self-instruct).")
    n_train_prompts: int = Field(48, ge=1, description="Prompts the policy samples on in every iteration (a seeded split of the prompts file).")
    n_eval_prompts: int = Field(128, ge=1, description="Held-out prompts the evaluator compares the new policy with the initial one on (disjoint from the training prompts).")
    split_seed: int = Field(0, ge=0, description="Seeds the train/held-out split of the prompts.")
    iterations: int = Field(3, description="K: rounds of sample -> label -> preference optimisation -> evaluate.")
    n_responses: int = Field(4, ge=2, description="Responses sampled per training prompt; every pair of them is labelled.")
    dpo_pairs: Literal["all", "best_worst"] = Field("best_worst", description="dpo: which labelled pairs train: all of them, or per prompt the one between the best and the worst response (each response scored by its summed win probability over its pairs, as in Self-Rewarding LMs); the same with n_responses 2.")
    max_new_tokens: int = Field(64, ge=1, description="Longest sampled response, in tokens (training and evaluation).")
    sampling_temperature: float = Field(0.7, gt=0, description="Sampling temperature of the policy (top-p 1). The reported KL is between the policies at this temperature.")
    gen_batch_size: int = Field(32, ge=1, description="Sequences decoded together by the transformers backend's batched decoder (32 was fastest on the 2-core CPU: docs/performance.md).")
    labeler: str = Field("llm", description="Who labels the pairs: llm (the LLM judge of the label settings, any backend) or rm:PATH (a reward model folder; soft label sigmoid((r_A - r_B)/T), the same in both orders).")
    label: LabelConfig = Field(default_factory=LabelConfig, description="The LLM judge's settings (labeler llm): method, orders, backend... as for `aifeedback label`.")
    gold: str | None = Field(None, description="rm labeler: a JSONL of gold pairs (messages or prompt, response_a, response_b, human A/B) on which its temperature T is fitted (labelers.metrics.fit_temperature); without it T is the label temperature setting.")
    method: Literal["dpo", "grpo"] = Field("dpo", description="dpo: TRL DPOTrainer on the labelled pairs from the current policy (reference = the current policy); grpo: TRL GRPOTrainer with the rm labeler's reward (no pairs).")
    beta: float = Field(0.1, gt=0, description="DPO beta (grpo: the KL coefficient).")
    lr: float = Field(2e-5, gt=0, description="Preference-optimisation learning rate.")
    epochs: float = Field(2.0, gt=0, description="dpo: epochs over each iteration's pairs.")
    batch_size: int = Field(4, ge=1, description="dpo: pairs per step; grpo: prompts per step.")
    max_length: int = Field(256, ge=16, description="dpo: most tokens of prompt + response.")
    soft_labels: Literal["none", "smoothing"] = Field("none", description="dpo: smoothing sets label_smoothing to the mean flip probability min(p, 1-p) of the pairs; none treats labels as certain.")
    min_confidence: float = Field(0.0, ge=0, le=1, description="dpo: drop pairs whose label confidence |2p - 1| is below this.")
    grpo_steps: int = Field(8, ge=1, description="grpo: optimiser steps per iteration.")
    evaluator: str | None = Field(None, description="Reward model folder that judges new vs initial policy on the held-out prompts; train it on labels independent of the labeler's.")
    eval_samples: int = Field(2, ge=1, description="Responses per held-out prompt from each policy; sample i of the new policy is compared with sample i of the initial one.")
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples (over prompts) for the confidence intervals.")
    seed: int = Field(0, ge=0, description="Seeds sampling and training (iteration k uses seed + k).")

    @field_validator("iterations")
    @classmethod
    def _k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"iterations must be at least 1 (K = {v} would train nothing); pass --iterations 1 or more")
        return v

    @model_validator(mode="after")
    def _labeler(self) -> LoopConfig:
        if self.labeler != "llm" and not (self.labeler.startswith("rm:") and len(self.labeler) > 3):
            raise ValueError(f"labeler must be llm or rm:PATH (a reward model folder), got {self.labeler!r}")
        if self.method == "grpo" and not self.labeler.startswith("rm:"):
            raise ValueError("method grpo takes its reward from a reward model: pass --labeler rm:PATH, or use method dpo")
        if self.label.input is not None:
            raise ValueError("label.input must be empty in a loop: the pairs are the policy's own samples")
        return self

    @property
    def rm_path(self) -> str | None:
        return self.labeler[3:] if self.labeler.startswith("rm:") else None
