"""Training flows: the distilled-RLAIF reward model, GRPO and DPO.

Each takes ``config_path`` (a YAML config of its trainer) and ``overrides`` (the
``--set`` keys), through :func:`aifeedback.config.build_config` like the stage flows.
"""

from __future__ import annotations

from pathlib import Path

from aifeedback.config import build_config
from aifeedback.errors import InputError
from aifeedback.provenance import git_commit, library_versions
from aifeedback.store import RunStore
from labelers.human_data import load_human
from trainers.data import split_with_humans
from trainers.reward_config import RewardConfig
from trainers.reward_trainer import RewardTrainer, select_pairs


def run_train_rm(run_dir: str, out_dir: str, config_path: str | None = None, overrides: dict | None = None, human: str | None = None, human_format: str = "hh", human_seed: int = 0) -> dict:
    """Train a reward model on a run's AI labels; evaluate on held-out human labels when given."""
    cfg = build_config(RewardConfig, config_path, overrides)
    store = RunStore(run_dir)
    rows = store.read_table("labels").to_pylist()
    humans = {h["pair_id"]: h for h in load_human(human_format, human, None, human_seed)} if human else None
    train, held = split_with_humans(rows, humans, cfg.eval_fraction if humans else 0.0, cfg.seed)
    kept, dropped = select_pairs(train, cfg)
    if not kept:
        raise InputError(f"no training pairs in {store.root} after filtering {len(train)} ({dropped}); lower min_confidence, set consistency=any, or label more pairs")
    trainer = RewardTrainer(cfg)
    res = trainer.train(train, held, checkpoint_dir=Path(out_dir) / "checkpoint")  # used when checkpoint_every > 0
    manifest = store.manifest("labels")
    out = trainer.save(out_dir, res, {"labels_run": str(store.root), "labeler": manifest.get("model"), "template": manifest.get("template_version"), "git_commit": git_commit(), "versions": library_versions()})
    summary = {"model": str(out), "n_train": res.n_train, "dropped": res.dropped, "n_eval": res.n_eval, "eval_accuracy": res.eval_accuracy, "first_loss": res.losses[0], "last_loss": res.losses[-1], "steps": len(res.losses), "seconds": round(res.seconds, 1), "resumed_from_step": res.resumed_from_step}
    print(summary)
    return summary


def run_train_rl(out_dir: str, prompts_file: str | None = None, config_path: str | None = None, overrides: dict | None = None, limit: int = 8) -> dict:
    """GRPO on the policy with a KL penalty; reward from a reward model (rm) or the labeler's score (direct)."""
    import json

    from aifeedback.generation import load_prompts
    from trainers.rl import train_grpo
    from trainers.rl_config import RLConfig

    from .generate import DEFAULT_PROMPTS

    cfg = build_config(RLConfig, config_path, overrides)
    items, _ = load_prompts(prompts_file or str(DEFAULT_PROMPTS), "prompt", None, limit)
    out = train_grpo(cfg, [it["messages"] for it in items], out_dir)
    trainer = out.pop("trainer")
    trainer.save_model(out_dir)
    Path(out_dir, "reward_curve.json").write_text(json.dumps({"config": cfg.model_dump(), **out}, indent=2))
    print(f"reward curve: {[round(r, 3) for r in out['reward_curve']]}")
    return {"model": out_dir, **out}


def run_train_dpo(out_dir: str, run_dir: str | None = None, preferences: str | None = None, config_path: str | None = None, overrides: dict | None = None) -> dict:
    """DPO through TRL on AI-labelled pairs (a run's labels) or a TRL-column preference file."""
    import json

    import pyarrow.parquet as pq

    from trainers.rl import dpo_dataset, train_dpo
    from trainers.rl_config import DPOTrainConfig

    cfg = build_config(DPOTrainConfig, config_path, overrides)
    if (run_dir is None) == (preferences is None):
        raise InputError("give one source of pairs: --run-dir RUN (a labelled run) or --preferences FILE (Parquet with prompt, chosen, rejected)")
    if preferences:
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pq.read_table(preferences).to_pylist()]
        smoothing = 0.0
    else:
        rows, smoothing = dpo_dataset(RunStore(run_dir).read_table("labels").to_pylist(), cfg)
    if not rows:
        raise InputError(f"no preference pairs to train on in {preferences or run_dir}; lower min_confidence or label more pairs")
    out = train_dpo(cfg, rows, out_dir, smoothing)
    trainer = out.pop("trainer")
    trainer.save_model(out_dir)
    Path(out_dir, "dpo_log.json").write_text(json.dumps({"config": cfg.model_dump(), "n_pairs": len(rows), **out}, indent=2))
    print(f"DPO on {len(rows)} pairs, label_smoothing {smoothing:.3f}: loss {out['losses'][0]:.4f} -> {out['losses'][-1]:.4f}")
    return {"model": out_dir, "n_pairs": len(rows), **out}
