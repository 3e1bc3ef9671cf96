"""Config of `aifeedback loop`: iterative online RLAIF (documented once, here), and the checks of its inputs.

The preference-optimisation settings are the trainers' own configs, nested: ``dpo`` is
`aifeedback train-dpo`'s :class:`DPOTrainConfig` and ``grpo`` `aifeedback train-rl`'s
:class:`RLConfig`. Where the loop's defaults differ from a trainer's (``LOOP_DPO``,
``LOOP_GRPO``) they fill every key not given, so ``--set dpo.beta=0.2`` keeps the loop's
lr and epochs. The keys the loop sets itself (``SET_BY_LOOP``: the policy, the seed, and
for grpo the reward and its group) are refused in the nested configs and left out of
their dumps.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer, field_validator, model_validator

from aifeedback.config import LabelConfig, StrictModel
from aifeedback.errors import InputError
from aifeedback.models import DEFAULT_POLICY

from ..rl_config import DPOTrainConfig, RLConfig
from .evaluators import Evaluator, parse_evaluators, read_card

# the loop's defaults where they differ from the trainers' own (a default loop trains as it did with flat keys)
LOOP_DPO: dict[str, Any] = {"lr": 2e-5, "epochs": 2.0, "batch_size": 4, "max_length": 256, "soft_labels": "none"}
LOOP_GRPO: dict[str, Any] = {"kl_beta": 0.1, "batch_size": 4, "max_steps": 8, "lr": 2e-5}
# keys of the nested configs that the loop sets itself: key -> the loop setting it comes from
SET_BY_LOOP: dict[str, dict[str, str]] = {
    "dpo": {"policy": "policy (then iteration k-1's checkpoint)", "seed": "seed (iteration k uses seed + k)"},
    "grpo": {
        "policy": "policy (then iteration k-1's checkpoint)",
        "seed": "seed (iteration k uses seed + k)",
        "reward": "labeler (grpo's reward is the rm labeler)",
        "reward_model": "labeler rm:PATH",
        "labeler": "labeler rm:PATH",
        "num_generations": "n_responses",
        "max_completion_length": "max_new_tokens",
    },
}
# the flat keys of the config before the trainers' configs were nested -> where each went
MOVED: dict[str, tuple[str, ...]] = {
    "beta": ("dpo.beta", "grpo.kl_beta"),
    "lr": ("dpo.lr", "grpo.lr"),
    "epochs": ("dpo.epochs",),
    "batch_size": ("dpo.batch_size", "grpo.batch_size"),
    "max_length": ("dpo.max_length",),
    "soft_labels": ("dpo.soft_labels",),
    "min_confidence": ("dpo.min_confidence",),
    "grpo_steps": ("grpo.max_steps",),
}


def _defaults(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


INDEPENDENCE_WARNING = "evaluator {name} is the labeler's own reward model: its evaluation is then not independent (the policy is judged by what it was trained to please); pass an evaluator trained on other labels"


class LoopConfig(StrictModel):
    policy: str = Field(DEFAULT_POLICY, description="Initial policy: embedded SmolLM2, a local folder or a Hugging Face id. Iteration k trains from iteration k-1's policy.")
    prompts: str | None = Field(None, description="Prompts file (JSONL, JSON list, CSV, Parquet). Self-instruct rows (instruction + instances[0].input) are read as such; otherwise prompt_column.")
    prompt_column: str = Field("prompt", description="Column with the prompt text or chat messages (files that are not self-instruct).")
    n_train_prompts: int = Field(48, ge=1, description="Prompts the policy samples on in every iteration (a seeded split of the prompts file).")
    n_eval_prompts: int = Field(128, ge=1, description="Held-out prompts the evaluator compares the new policy with the initial one on (disjoint from the training prompts).")
    split_seed: int = Field(0, ge=0, description="Seeds the train/held-out split of the prompts.")
    iterations: int = Field(3, description="K: rounds of sample -> label -> preference optimisation -> evaluate.")
    n_responses: int = Field(4, ge=2, description="Responses sampled per training prompt; every pair of them is labelled (grpo: the group size).")
    dpo_pairs: Literal["all", "best_worst"] = Field("best_worst", description="dpo: which labelled pairs train: all of them, or per prompt the one between the best and the worst response (each response scored by its summed win probability over its pairs, as in Self-Rewarding LMs); the same with n_responses 2.")
    max_new_tokens: int = Field(64, ge=1, description="Longest sampled response, in tokens (training and evaluation).")
    sampling_temperature: float = Field(0.7, gt=0, description="Sampling temperature of the policy (top-p 1). The reported KL is between the policies at this temperature.")
    gen_batch_size: int | None = Field(None, ge=1, description="Sequences decoded together by the transformers backend's batched decoder; default: the backend's (32 on CPU, the fastest on the 2-core CPU: docs/performance.md; on a GPU sized by its free memory). The policy loads in the backend's default dtype: bfloat16 on a GPU with bf16 units, else float32.")
    labeler: str = Field("llm", description="Who labels the pairs: llm (the LLM judge of the label settings, any backend) or rm:PATH (a reward model folder; soft label sigmoid((r_A - r_B)/T), the same in both orders).")
    label: LabelConfig = Field(default_factory=LabelConfig, description="The LLM judge's settings (labeler llm): method, orders, backend... as for `aifeedback label`.")
    gold: str | None = Field(None, description="rm labeler: a JSONL of gold pairs (messages or prompt, response_a, response_b, human A/B) on which its temperature T is fitted (labelers.metrics.fit_temperature); without it T is the label temperature setting.")
    method: Literal["dpo", "grpo"] = Field("dpo", description="dpo: TRL DPOTrainer on the labelled pairs from the current policy (reference = the current policy); grpo: TRL GRPOTrainer with the rm labeler's reward (no pairs).")
    dpo: DPOTrainConfig = Field(default_factory=lambda: DPOTrainConfig(**LOOP_DPO), description="method dpo: the `aifeedback train-dpo` settings (beta, lr, epochs, batch_size, max_length, soft_labels, min_confidence...); the loop's defaults where they differ from train-dpo's: " + _defaults(LOOP_DPO) + ". The loop sets policy and seed.")
    grpo: RLConfig = Field(default_factory=lambda: RLConfig(**LOOP_GRPO), description="method grpo: the `aifeedback train-rl` settings (kl_beta, lr, batch_size in prompts, max_steps per iteration); the loop's defaults where they differ from train-rl's: " + _defaults(LOOP_GRPO) + ". The loop sets policy, seed, the reward (the rm labeler), the group (n_responses) and the completion length (max_new_tokens).")
    evaluator: str | list[str] | None = Field(None, description="Reward model folder(s) that judge new vs initial policy on the held-out prompts, each on the same samples: one PATH, or several separated by commas (--evaluator a,b) or as a YAML list; NAME=PATH names one in the report (default: the folder's name). Train them on labels independent of the labeler's; a re-run with other evaluators recomputes only the eval stage.")
    eval_samples: int = Field(2, ge=1, description="Responses per held-out prompt from each policy; sample i of the new policy is compared with sample i of the initial one.")
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples (over prompts) for the confidence intervals.")
    seed: int = Field(0, ge=0, description="Seeds sampling and training (iteration k uses seed + k).")

    @model_validator(mode="before")
    @classmethod
    def _nested_trainer_configs(cls, data: Any) -> Any:
        """Old flat keys name their new place; the nested configs get the loop's defaults and refuse the keys the loop sets."""
        if not isinstance(data, dict):
            return data
        moved = [f"{k} moved to {MOVED[k][0]}" + (f" (method grpo: {MOVED[k][1]})" if len(MOVED[k]) > 1 else "") for k in data if k in MOVED]
        if moved:
            raise ValueError("; ".join(moved) + ": the trainers' settings are nested under dpo and grpo, e.g. --set dpo.beta=0.2")
        data = dict(data)
        for name, defaults in (("dpo", LOOP_DPO), ("grpo", LOOP_GRPO)):
            given = data.get(name)
            if given is None:
                data.pop(name, None)  # the default_factory
                continue
            if isinstance(given, BaseModel):
                given = {k: getattr(given, k) for k in given.model_fields_set}
            if not isinstance(given, dict):
                continue  # pydantic reports the type
            owned = [k for k in given if k in SET_BY_LOOP[name]]
            if owned:
                raise ValueError("; ".join(f"{name}.{k} is set by the loop, from {SET_BY_LOOP[name][k]}" for k in owned) + f": remove it from {name}")
            data[name] = {**defaults, **given}
        return data

    @field_serializer("dpo", "grpo", mode="wrap")
    def _without_loop_keys(self, value: Any, handler: Any, info: Any) -> Any:
        """Dumps (RUN/loop_config.json) leave out what the loop sets, so they validate back."""
        return _settings(info.field_name, handler(value))

    @field_validator("iterations")
    @classmethod
    def _k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"iterations must be at least 1 (K = {v} would train nothing); set `iterations` to 1 or more")
        return v

    @model_validator(mode="after")
    def _labeler(self) -> LoopConfig:
        if self.labeler != "llm" and not (self.labeler.startswith("rm:") and len(self.labeler) > 3):
            raise ValueError(f"labeler must be llm or rm:PATH (a reward model folder), got {self.labeler!r}")
        if self.method == "grpo" and not self.labeler.startswith("rm:"):
            raise ValueError("method grpo takes its reward from a reward model: set `labeler` to rm:PATH, or `method` to dpo")
        if self.label.input is not None:
            raise ValueError("label.input must be empty in a loop: the pairs are the policy's own samples")
        parse_evaluators(self.evaluator)  # names: each given or its folder's, and no two alike
        return self

    @property
    def rm_path(self) -> str | None:
        return self.labeler[3:] if self.labeler.startswith("rm:") else None

    @property
    def evaluators(self) -> list[Evaluator]:
        """The evaluators, named, in the order given."""
        return parse_evaluators(self.evaluator)

    def independent(self, ev: Evaluator) -> bool:
        """False when ``ev`` is the rm labeler's own folder (its verdicts are then not an independent evaluation)."""
        return not (self.rm_path and Path(self.rm_path).resolve() == Path(ev.path).resolve())

    def dpo_for(self, policy: str, seed: int) -> DPOTrainConfig:
        """Iteration's DPO config: the nested settings, from this policy with this seed."""
        return DPOTrainConfig.model_validate({**self.dpo.model_dump(), "policy": policy, "seed": seed})

    def grpo_for(self, policy: str, seed: int) -> RLConfig:
        """Iteration's GRPO config: the nested settings, the rm labeler as reward, n_responses per group, max_new_tokens per completion."""
        return RLConfig.model_validate({**self.grpo.model_dump(), "policy": policy, "seed": seed, "reward": "rm", "reward_model": self.rm_path, "num_generations": self.n_responses, "max_completion_length": self.max_new_tokens})


def _settings(name: str, dumped: Any) -> Any:
    """A nested config's dump without the keys the loop sets."""
    return {k: v for k, v in dumped.items() if k not in SET_BY_LOOP[name]} if isinstance(dumped, dict) else dumped


def upgrade_config(saved: dict) -> dict:
    """A RUN/loop_config.json written before the trainers' configs were nested, in today's shape (a current one unchanged)."""
    if not any(k in saved for k in MOVED):
        return saved
    nested: dict[str, dict] = {"dpo": dict(LOOP_DPO), "grpo": dict(LOOP_GRPO)}
    for old, targets in MOVED.items():
        for target in targets:
            section, key = target.split(".")
            if old in saved:
                nested[section][key] = saved[old]
    out = {k: v for k, v in saved.items() if k not in MOVED}
    out["dpo"] = _settings("dpo", DPOTrainConfig(**nested["dpo"]).model_dump(mode="json"))
    out["grpo"] = _settings("grpo", RLConfig(**nested["grpo"]).model_dump(mode="json"))
    return out


def check_inputs(cfg: LoopConfig) -> list[str]:
    """Clear errors for bad inputs before any model runs; returns warnings."""
    from labelers.rm_labeler import check_reward_model_dir

    notes = []
    if not cfg.prompts:
        raise InputError("the loop needs prompts: set `prompts` to a file (e.g. ../shared/data/self-instruct/user_oriented_instructions.jsonl)")
    if not cfg.evaluators:
        raise InputError("the loop needs an evaluator: set `evaluator` to a folder (or several, comma-separated), a reward model trained on labels independent of the labeler's (`aifeedback train-rm`)")
    if cfg.rm_path:
        check_reward_model_dir(cfg.rm_path)
    for ev in cfg.evaluators:
        check_reward_model_dir(ev.path)
        read_card(ev.path)  # a malformed evaluation.json fails here, before any model runs
        if not cfg.independent(ev):
            note = INDEPENDENCE_WARNING.format(name=ev.name)
            notes.append(note)
            warnings.warn(note, stacklevel=2)
    if cfg.gold and not Path(cfg.gold).is_file():
        raise InputError(f"gold file {cfg.gold} does not exist; pass a JSONL of pairs with a human label A/B, or leave `gold` unset")
    return notes
