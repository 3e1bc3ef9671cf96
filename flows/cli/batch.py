"""Batch mode's commands: import output files run elsewhere, cancel a run's open batches (aifeedback/batch_api.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from aifeedback.errors import ConfigError

from .app import app, console, fail, run_flow, user_errors
from .options import STAGES

# the run store's stage -> the command that writes it (its config is RUN/configs/COMMAND.json)
STAGE_COMMANDS = {"responses": "generate", "revisions": "revise", "labels": "label"}


@app.command("import-batch-output")
def import_batch_output(
    files: list[str] = typer.Argument(..., help="Batch output files: from the Batch API (downloaded by hand) or from `vllm run-batch -i REQUESTS -o OUTPUT`."),
    run_dir: str = typer.Option(..., "--run-dir", help="The run whose --batch-file-only requests these files answer."),
) -> None:
    """Read batch output files into a run, then finish its stages from them: the same rows as the synchronous path."""
    from aifeedback.batch_files import import_outputs

    with user_errors():
        got = import_outputs(run_dir, files)
        for stage, info in got.items():
            console.print(f"{stage}: {info['answered']} answers from {len(info['files'])} file(s)")
        for stage in got:
            command = STAGE_COMMANDS.get(stage)
            saved = Path(run_dir) / "configs" / f"{command}.json"
            if command is None or not saved.is_file():
                raise ConfigError(f"{run_dir} has no saved {command or stage} config ({saved}); re-run the command that wrote the requests, with the same --run-dir, to finish the stage")
            spec = STAGES[command]
            # the stage as it ran (still batch_file_only: requests without an answer are written to files again, never sent)
            run_flow(spec.module, spec.function, run_dir=run_dir, config_path=None, overrides=json.loads(saved.read_text()), max_batches=None)


@app.command("cancel-batches")
def cancel_batches(run_dir: str = typer.Option(..., "--run-dir", help="The run whose open batches to cancel.")) -> None:
    """Cancel every batch of a run that is still open at its endpoint (the key comes from the environment, as for the run)."""
    from aifeedback.batch_api import cancel
    from aifeedback.batch_files import stages_with_batches

    if not stages_with_batches(run_dir):
        fail(ConfigError(f"{run_dir} has no batches (RUN/batch_api/ is absent); pass the --run-dir of a stage run with --batch"))
    with user_errors():
        done = cancel(run_dir)
    for bid, status in done:
        console.print(f"{bid}: {status}")
    console.print(f"{len(done)} open batch(es) cancelled" if done else "no open batches")
