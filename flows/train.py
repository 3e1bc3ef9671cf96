"""Training flows: the distilled-RLAIF reward model (more trainers land here)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from aifeedback.provenance import git_commit, library_versions
from aifeedback.store import RunStore
from labelers.human_data import load_human
from trainers.data import split_with_humans
from trainers.reward_config import RewardConfig
from trainers.reward_trainer import RewardTrainer


@flow(name="train-rm", log_prints=True)
def train_rm_flow(run_dir: str, out_dir: str, overrides: dict | None = None, human: str | None = None, human_format: str = "hh", human_seed: int = 0) -> dict:
    """Train a reward model on a run's AI labels; evaluate on held-out human labels when given."""
    cfg = RewardConfig.model_validate(overrides or {})
    store = RunStore(run_dir)
    rows = store.read_table("labels").to_pylist()
    humans = {h["pair_id"]: h for h in load_human(human_format, human, None, human_seed)} if human else None
    train, held = split_with_humans(rows, humans, cfg.eval_fraction if humans else 0.0, cfg.seed)
    trainer = RewardTrainer(cfg)
    res = trainer.train(train, held)
    manifest = store.manifest("labels")
    out = trainer.save(out_dir, res, {"labels_run": str(store.root), "labeler": manifest.get("model"), "template": manifest.get("template_version"), "git_commit": git_commit(), "versions": library_versions()})
    summary = {"model": str(out), "n_train": res.n_train, "dropped": res.dropped, "n_eval": res.n_eval, "eval_accuracy": res.eval_accuracy, "first_loss": res.losses[0], "last_loss": res.losses[-1], "steps": len(res.losses), "seconds": round(res.seconds, 1)}
    print(summary)
    return summary
