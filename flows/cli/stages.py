"""The stage commands (generate, revise, label, import-labels) and their estimates, built from flows/cli/options.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from aifeedback.config import LabelConfig, build_config
from aifeedback.errors import ConfigError
from labelers.alpaca_eval import AlpacaEvalConfig

from .app import (
    ConfigPath,
    RunDir,
    Sets,
    app,
    checked_config,
    opt,
    overrides_from,
    run_flow,
    summary,
    user_errors,
)
from .options import STAGES, Stage, stage_command

# what each stage passes to its function besides run_dir, config_path, overrides and max_batches
_EXTRA = {"label": ("runner", "workers", "ray_address")}


def _run_stage(stage: Stage, kw: dict) -> None:
    with user_errors():
        cfg = checked_config(stage.config, kw["config"], kw["set_"], overrides_from(stage.config, kw))
        labeler, gold = kw.get("labeler"), kw.get("gold")
        if labeler not in (None, "llm"):
            from labelers.rm_labeler import check_reward_model_dir
            from trainers.loop.config import LoopConfig

            LoopConfig(labeler=labeler)  # rm:PATH or llm, checked before any model loads
            check_reward_model_dir(labeler[3:])
        elif gold:
            raise ConfigError("--gold fits a reward model labeler's temperature; pass --labeler rm:PATH with it")
    if kw["estimate"]:
        with user_errors():
            from flows.estimate import estimate

            result = estimate(stage.name, kw["run_dir"], cfg["config_path"], cfg["overrides"], kw["tokenizer"], labeler=labeler)
        print(json.dumps(result, indent=1)) if kw["as_json"] else summary(result)
        return
    extra = {k: kw[k] for k in _EXTRA.get(stage.name, ())}
    if labeler not in (None, "llm"):
        extra.update(labeler=labeler, gold=gold)
    run_flow(stage.module, stage.function, run_dir=kw["run_dir"], **cfg, max_batches=kw["max_batches"], **extra)


estimate_app = typer.Typer(help="What a stage would send, cost and take, before spending: no model call. Every option of the stage (the same as STAGE --estimate).", no_args_is_help=True)
app.add_typer(estimate_app, name="estimate")

for _stage in STAGES.values():
    app.command(_stage.name)(stage_command(_stage, _run_stage))
    estimate_app.command(_stage.name)(stage_command(_stage, _run_stage, estimate=True))


@app.command("import-labels")
def import_labels(
    verdicts: str = typer.Argument(..., help="The judge's verdict file: PandaLM-style (idx + NAME_result) or any table with an id and a verdict or probability column; with --format alpaca-eval, the AlpacaEval folder (annotations + references)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="The judge's name, recorded as labeler_model on every row (e.g. gpt-3.5-turbo); needed for a verdict file, AlpacaEval's is named for you."),
    source_format: str = typer.Option("verdicts", "--format", help="verdicts: a verdict file for the run's pairs; alpaca-eval: AlpacaEval annotations, which bring their own pairs (labelers/alpaca_eval.py)."),
    derive_pairs: Optional[str] = opt(AlpacaEvalConfig, "derive_pairs", "--derive-pairs"),
    eps: Optional[float] = opt(AlpacaEvalConfig, "eps", "--eps"),
    instructions: Optional[int] = opt(AlpacaEvalConfig, "instructions", "--instructions"),
    run_dir: str = RunDir,
    input: Optional[str] = opt(LabelConfig, "input", "--input", "-i"),
    config: Optional[Path] = ConfigPath,
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Verdict file column with the pair id (default idx, else pair_id)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Column with the hard verdict: A/B/tie, 1/2/0 or response_a/response_b (default NAME_result, else label)."),
    prob_column: Optional[str] = typer.Option(None, "--prob-column", help="Column with P(A > B) in [0, 1]: a soft label, used instead of --label-column."),
    id_prefix: str = typer.Option("", "--id-prefix", help="Prefix added to the file's ids to match pair ids (PandaLM files get pandalm- by default)."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Bring a judge's verdicts (a hosted LLM, PandaLM...) into a run as AI labels, with the judge as provenance."""
    alpaca_eval = {k: v for k, v in (("derive_pairs", derive_pairs), ("eps", eps), ("instructions", instructions)) if v is not None}
    with user_errors():
        cfg = checked_config(LabelConfig, config, set_, overrides_from(LabelConfig, locals()))
        build_config(AlpacaEvalConfig, None, alpaca_eval)  # a bad value fails here, before any file is read
    run_flow("flows.import_labels", "run_import_labels", run_dir=run_dir, verdicts=verdicts, judge=judge, **cfg, id_column=id_column, label_column=label_column, prob_column=prob_column, id_prefix=id_prefix, source_format=source_format, alpaca_eval=alpaca_eval)
