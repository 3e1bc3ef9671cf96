"""Config of the distilled-RLAIF reward model trainer (documented once, here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aifeedback.config import StrictModel
from aifeedback.models import DEFAULT_REWARD_BACKBONE
from aifeedback.preference import ConsistencyFilter, MinConfidence


class RewardConfig(StrictModel):
    backbone: str = Field(DEFAULT_REWARD_BACKBONE, description="Sequence-classification backbone: embedded/all-minilm-l6-v2 (MiniLM, the default), embedded/smollm2-135m-instruct (a decoder with a value head read at the last token that is not padding), a local folder or a Hugging Face id.")
    labels: Literal["soft", "hard"] = Field("soft", description="soft: BCE(sigmoid(r_A - r_B), p(A>B)) on the AI soft labels; hard: -log sigmoid(r_w - r_l - margin) on hard labels, the argmax of p(A>B) (a baseline).")
    margin: float = Field(0.0, ge=0, description="hard labels: the margin subtracted inside the sigmoid.")
    min_confidence: MinConfidence = 0.0
    consistency: ConsistencyFilter = "any"
    epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(16, ge=1, description="Pairs per optimiser step.")
    max_length: int = Field(256, ge=16, description="Tokens per (prompt, response) input; longer inputs lose tokens from the longer of prompt and response first.")
    seed: int = Field(0, ge=0, description="Seeds the split, the shuffling and the head initialisation.")
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="Share of pairs with a human label held out for evaluation.")
    length_head: bool = Field(False, description="ODIN (Chen et al. 2024): a second head trained jointly to absorb response length (its reward correlates with length, the quality head's does not); only the quality head scores at inference.")
    length_weight: float = Field(1.0, ge=0, description="length_head: weight of the correlation terms |corr(r_quality, length)| - corr(r_length, length) added to the pairwise loss.")
    length_balance: bool = Field(False, description="Weight training pairs so that pairs won by the longer response and pairs won by the shorter one count equally in the loss.")
    checkpoint_every: int = Field(0, ge=0, description="Save the whole training state (weights, optimiser, the epoch's order and position, RNG states, losses, gold curve) every this many optimiser steps and at each epoch's end, in the output folder's checkpoint/ (removed once the model is saved). Rerun the same command and training resumes there, reaching the weights an uninterrupted run reaches. 0: no checkpoints.")
    early_stopping: bool = Field(False, description="After each epoch, score the gold slice (pairs with a human label passed as gold rows) and keep the weights of the best epoch.")
    length_control: Literal["none", "residual"] = Field("none", description="residual: before training, fit the judge's length effect, logit p(A>B) = beta1 * tanh((chars_A - chars_B) / s) + rest (AlpacaEval's length-controlled feature; s is the root mean square of the length difference; least squares on the log-odds, no intercept, so swapping A and B changes nothing), and train on sigmoid(logit p - beta1 * tanh((chars_A - chars_B) / s)), the preference with the length term removed; beta1 and s are saved beside the model. Soft labels only.")
    length_control_eps: float = Field(0.01, gt=0, lt=0.5, description="length_control=residual: the judge's p(A>B) is clipped to [eps, 1 - eps] before its log-odds, in the fit and in the targets. A judge's near-certain verdicts (p < 0.01 is common) would otherwise dominate the least squares fit; 0.01, the default, is also import-labels' --eps for derived pairs.")

    @model_validator(mode="after")
    def _length_control_needs_soft_labels(self):
        if self.length_control == "residual" and self.labels == "hard":
            raise ValueError("length_control=residual rewrites the soft targets p(A>B), and labels=hard trains on their argmax instead: set labels=soft, or keep labels=hard and control length with length_balance=true or length_head=true")
        return self
