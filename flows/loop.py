"""`aifeedback loop`: K iterations of online RLAIF (stages in trainers/loop/stages.py).

Each iteration: the current policy samples n responses per training prompt; the labeler
(an LLM judge on any backend, or a reward model) labels every pair; TRL's DPO (or GRPO
with the RM as reward) trains from the current policy; the evaluator compares the new
policy with the initial one on held-out prompts (each of several evaluators on the same
samples, and how often two of them agree). A stage with a finished marker is skipped, so a
re-run after a crash redoes only the unfinished stage, and a re-run with other evaluators
only the eval stages.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from aifeedback.config import build_config
from trainers.loop import stages as S
from trainers.loop.config import LoopConfig, check_inputs
from trainers.loop.report import write_report
from trainers.loop.rundir import STAGES, check_run_config, run_stage
from trainers.loop.sampling import load_loop_prompts


def loop_stage(run_dir: str, k: int, stage: str, cfg: LoopConfig, train: list, held: list) -> dict:
    run = Path(run_dir)
    fns = {
        "sample": lambda: S.stage_sample(run, cfg, k, train),
        "label": lambda: S.stage_label(run, cfg, k),
        "train": lambda: S.stage_train(run, cfg, k, train),
        "eval": lambda: S.stage_eval(run, cfg, k, held),
    }
    return run_stage(run, k, stage, fns[stage], key=S.evaluator_key(cfg) if stage == "eval" else None)


def run_loop(run_dir: str = "runs/loop", config_path: str | None = None, overrides: dict | None = None, compare: dict | None = None) -> dict:
    """Run (or resume) the loop in ``run_dir``; writes report.html and report.json there.

    ``compare``: other loop runs (name -> run dir) shown side by side in the report, e.g. the LLM-labelled control.
    """
    cfg = build_config(LoopConfig, config_path, overrides)
    run = Path(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below, once
        notes = check_inputs(cfg)
    for n in notes:
        print(f"warning: {n}")
    train, held = load_loop_prompts(cfg)
    run.mkdir(parents=True, exist_ok=True)
    check_run_config(run, cfg)
    if cfg.method == "grpo":
        stages = ("train", "eval")
    else:
        stages = STAGES
    summary = {"run_dir": str(run), "warnings": notes, "iterations": []}
    for k in range(1, cfg.iterations + 1):
        it = {"iteration": k}
        for stage in stages:
            it[stage] = loop_stage(str(run), k, stage, cfg, train, held)
        e = it["eval"]
        print(f"iteration {k}: tokens {e['mean_tokens_new']:.1f} (initial {e['mean_tokens_initial']:.1f}), KL {e['kl_to_initial']:.3f}")
        for v in e["evaluators"]:
            print(f"  evaluator {v['name']}: win rate {v['win_rate']:.1%} [{v['win_rate_ci'][0]:.1%}, {v['win_rate_ci'][1]:.1%}], LC {v['lc_win_rate']:.1%} [{v['lc_win_rate_ci'][0]:.1%}, {v['lc_win_rate_ci'][1]:.1%}]" + ("" if v["independent"] else " (the labeler's own reward model: not independent)"))
        for a in e["agreement"]:
            print(f"  {a['a']} and {a['b']} pick the same winner on " + ("no pair" if a["agreement"] is None else f"{a['agreement']:.1%} of {a['n']} pairs (chance {a['chance']:.1%}; {a['n_tied']} with a tie left out)"))
        summary["iterations"].append({"iteration": k, **{s: it[s].get("seconds") for s in stages}, "evaluators": {v["name"]: {"win_rate": v["win_rate"], "lc_win_rate": v["lc_win_rate"]} for v in e["evaluators"]}, "agreement": e["agreement"]})
    runs = {f"{Path(run).name} ({cfg.labeler if cfg.rm_path else 'llm:' + cfg.label.backend.model})": run, **(compare or {})}
    write_report(runs, run)
    summary["report"] = str(run / "report.html")
    print(f"report: {run / 'report.html'}")
    return summary
