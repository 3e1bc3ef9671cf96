"""Training commands: the reward model, GRPO, DPO, and the closed loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aifeedback.errors import ConfigError
from trainers.loop.config import LoopConfig
from trainers.reward_config import RewardConfig
from trainers.rl_config import DPOTrainConfig, RLConfig

from .app import (
    ConfigPath,
    RunDir,
    Sets,
    app,
    checked_config,
    opt,
    overrides_from,
    run_flow,
    user_errors,
)


@app.command("train-rm")
def train_rm(
    run_dir: str = RunDir,
    out: str = typer.Option(..., "--out", help="Folder for the model, its card and its config."),
    config: Optional[Path] = ConfigPath,
    labels: Optional[str] = opt(RewardConfig, "labels", "--labels"),
    backbone: Optional[str] = opt(RewardConfig, "backbone", "--backbone"),
    human: Optional[str] = typer.Option(None, help="Human labels for held-out evaluation (joined by pair id)."),
    human_format: str = typer.Option("hh", help="hh, pandalm, llmbar or generic."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Distilled RLAIF: train a reward model on this run's AI soft labels."""
    flags = overrides_from(RewardConfig, locals())
    with user_errors():
        cfg = checked_config(RewardConfig, config, set_, flags)
    run_flow("flows.train", "run_train_rm", run_dir=run_dir, out_dir=out, **cfg, human=human, human_format=human_format)


@app.command("train-rl")
def train_rl(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy and its reward curve."),
    config: Optional[Path] = ConfigPath,
    reward: Optional[str] = opt(RLConfig, "reward", "--reward"),
    reward_model: Optional[str] = opt(RLConfig, "reward_model", "--reward-model"),
    policy: Optional[str] = opt(RLConfig, "policy", "--policy"),
    prompts: Optional[str] = typer.Option(None, help="Prompt file; default data/prompts."),
    limit: int = typer.Option(8, help="Prompts used."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """RL on AI feedback (GRPO with a KL penalty to the reference policy)."""
    flags = overrides_from(RLConfig, locals())
    with user_errors():
        cfg = checked_config(RLConfig, config, set_, flags)
    run_flow("flows.train", "run_train_rl", out_dir=out, prompts_file=prompts, **cfg, limit=limit)


@app.command("train-dpo")
def train_dpo(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="A labelled run: its AI labels become DPO pairs."),
    preferences: Optional[str] = typer.Option(None, help="Or a Parquet file in TRL columns (prompt, chosen, rejected)."),
    config: Optional[Path] = ConfigPath,
    policy: Optional[str] = opt(DPOTrainConfig, "policy", "--policy"),
    set_: Optional[list[str]] = Sets,
) -> None:
    """DPO on AI-labelled pairs through TRL (confidence filter; soft labels as label smoothing)."""
    flags = overrides_from(DPOTrainConfig, locals())
    with user_errors():
        cfg = checked_config(DPOTrainConfig, config, set_, flags)
    run_flow("flows.train", "run_train_dpo", out_dir=out, run_dir=run_dir, preferences=preferences, **cfg)


@app.command()
def loop(
    run_dir: str = typer.Option("runs/loop", "--run-dir", help="Run directory of the loop (a re-run resumes it at the unfinished stage)."),
    config: Optional[Path] = ConfigPath,
    policy: Optional[str] = opt(LoopConfig, "policy", "--policy"),
    prompts: Optional[str] = opt(LoopConfig, "prompts", "--prompts"),
    iterations: Optional[int] = opt(LoopConfig, "iterations", "--iterations", "-k"),
    labeler: Optional[str] = opt(LoopConfig, "labeler", "--labeler"),
    gold: Optional[str] = opt(LoopConfig, "gold", "--gold"),
    evaluator: Optional[str] = opt(LoopConfig, "evaluator", "--evaluator"),
    method: Optional[str] = opt(LoopConfig, "method", "--method"),
    label__backend__batch: Optional[bool] = opt(LoopConfig, "label.backend.batch", "--batch/--no-batch"),
    label__backend__batch_file_only: Optional[bool] = opt(LoopConfig, "label.backend.batch_file_only", "--batch-file-only/--no-batch-file-only"),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="NAME=RUN_DIR: another loop run shown side by side in the report (repeatable), e.g. the LLM-labelled control."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Iterative online RLAIF: sample, label (LLM judge or reward model), DPO/GRPO, evaluate against the initial policy; K times."""
    flags = overrides_from(LoopConfig, locals())
    with user_errors():
        cfg = checked_config(LoopConfig, config, set_, flags)
        pairs = dict(c.split("=", 1) for c in compare or [] if "=" in c)
        if len(pairs) != len(compare or []):
            raise ConfigError("--compare takes NAME=RUN_DIR, e.g. --compare control=runs/loop-llm")
    run_flow("flows.loop", "run_loop", run_dir=run_dir, **cfg, compare=pairs or None)
