"""`aifeedback loop`: K iterations of online RLAIF as one Prefect flow (stages in trainers/loop.py).

Each iteration: the current policy samples n responses per training prompt; the labeler
(an LLM judge on any backend, or a reward model) labels every pair; TRL's DPO (or GRPO
with the RM as reward) trains from the current policy; the evaluator compares the new
policy with the initial one on held-out prompts. A stage with a finished marker is
skipped, so a re-run after a crash redoes only the unfinished stage.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from aifeedback.config import build_config
from trainers import loop as L
from trainers.loop_config import LoopConfig
from trainers.loop_report import write_report

from .common import execute_stage


@task(name="loop-stage", cache_policy=NO_CACHE, task_run_name="iter{k}-{stage}")
def loop_stage(run_dir: str, k: int, stage: str, cfg: LoopConfig, train: list, held: list) -> dict:
    run = Path(run_dir)
    fns = {
        "sample": lambda: L.stage_sample(run, cfg, k, train),
        "label": lambda: L.stage_label(run, cfg, k, execute_stage),
        "train": lambda: L.stage_train(run, cfg, k, train),
        "eval": lambda: L.stage_eval(run, cfg, k, held),
    }
    return L.run_stage(run, k, stage, fns[stage])


@flow(name="loop", log_prints=True)
def loop_flow(run_dir: str = "runs/loop", config_path: str | None = None, overrides: dict | None = None, compare: dict | None = None) -> dict:
    """Run (or resume) the loop in ``run_dir``; writes report.html and report.json there.

    ``compare``: other loop runs (name -> run dir) shown side by side in the report, e.g. the LLM-labelled control.
    """
    cfg = build_config(LoopConfig, config_path, overrides)
    run = Path(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below, once
        notes = L.check_inputs(cfg)
    for n in notes:
        print(f"warning: {n}")
    train, held = L.load_loop_prompts(cfg)
    run.mkdir(parents=True, exist_ok=True)
    L.check_run_config(run, cfg)
    if cfg.method == "grpo":
        stages = ("train", "eval")
    else:
        stages = L.STAGES
    summary = {"run_dir": str(run), "warnings": notes, "iterations": []}
    for k in range(1, cfg.iterations + 1):
        it = {"iteration": k}
        for stage in stages:
            it[stage] = loop_stage(str(run), k, stage, cfg, train, held)
        e = it["eval"]
        print(f"iteration {k}: win rate {e['win_rate']:.1%} [{e['win_rate_ci'][0]:.1%}, {e['win_rate_ci'][1]:.1%}], LC {e['lc_win_rate']:.1%} [{e['lc_win_rate_ci'][0]:.1%}, {e['lc_win_rate_ci'][1]:.1%}], tokens {e['mean_tokens_new']:.1f} (initial {e['mean_tokens_initial']:.1f}), KL {e['kl_to_initial']:.3f}")
        summary["iterations"].append({"iteration": k, **{s: it[s].get("seconds") for s in stages}, "win_rate": e["win_rate"], "lc_win_rate": e["lc_win_rate"]})
    runs = {f"{Path(run).name} ({cfg.labeler if cfg.rm_path else 'llm:' + cfg.label.backend.model})": run, **(compare or {})}
    write_report(runs, run)
    summary["report"] = str(run / "report.html")
    print(f"report: {run / 'report.html'}")
    return summary
