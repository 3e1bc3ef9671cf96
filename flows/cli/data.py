"""Data commands: agreement reports, human pairs, export, run history and usage, configs, the viewer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from aifeedback.errors import ConfigError
from flows.schedule import FLOWS
from trainers.reward_config import RewardConfig
from trainers.rl_config import DPOTrainConfig, RLConfig

from .app import STATE, RunDir, app, console, fail, run_flow, user_errors


@app.command()
def agreement(
    human: str = typer.Option(..., help="Human-label file (hh-rlhf jsonl.gz, PandaLM testset json, LLMBar json, or a table)."),
    human_format: str = typer.Option("pandalm", help="hh, pandalm, llmbar or generic."),
    run: Optional[list[str]] = typer.Option(None, "--run", help="A labelled run as NAME=RUN_DIR (repeatable)."),
    judge: Optional[list[str]] = typer.Option(None, "--judge", help="A verdict file as NAME=FILE (repeatable)."),
    out: str = typer.Option("runs/agreement", "--out", help="Report folder."),
    human_limit: Optional[int] = typer.Option(None, help="Only the first N human items."),
    human_seed: int = typer.Option(0, help="hh: the seed that randomised A/B when the pairs were made."),
    human_id_column: str = typer.Option("pair_id", help="generic: id column."),
    human_label_column: str = typer.Option("label", help="generic: label column."),
) -> None:
    """AI-vs-human agreement report for any number of judges, side by side."""
    run_flow("flows.agreement", "run_agreement", human=human, human_format=human_format, runs=run, judges=judge, out_dir=out, human_limit=human_limit, human_seed=human_seed, human_id_column=human_id_column, human_label_column=human_label_column)


@app.command("import-pairs")
def import_pairs(
    fmt: str = typer.Argument(..., help="hh, pandalm or llmbar."),
    src: str = typer.Argument(..., help="Source file."),
    out: str = typer.Argument(..., help="Pairs JSONL to write (pair_id, prompt, response_a, response_b, human)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items."),
    seed: int = typer.Option(0, help="hh: seed of the A/B coin."),
) -> None:
    """Turn a human-preference data set into a pairs file for `aifeedback label --input`."""
    from labelers.human_data import load_human

    with user_errors():
        items = load_human(fmt, src, limit, seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"pair_id": it["pair_id"], "prompt": it["messages"], "response_a": it["response_a"], "response_b": it["response_b"], "human": it["human"], "source": it.get("source")}, ensure_ascii=False) + "\n")
    console.print(f"wrote {len(items)} pairs to {out}")


# aifeedback.export imports only the standard library and yaml at load, so --help stays fast
from aifeedback.export import ExportOptions, option_help

_EXPORT = ExportOptions()


@app.command()
def export(
    run_dir: str = RunDir,
    to_dir: Optional[str] = typer.Option(None, "--to-dir", help="Folder for the Hub layout (README.md card, provenance.json, data/CONFIG/SPLIT-*.parquet); default RUN_DIR/export. An earlier export there is replaced."),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Also push that folder to this Hub data set repo (ORG/NAME). The token comes from HF_TOKEN or `hf auth login` and is never written."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
    test_size: float = typer.Option(_EXPORT.test_size, help=option_help("test_size")),
    seed: int = typer.Option(_EXPORT.seed, help=option_help("seed")),
    min_confidence: float = typer.Option(_EXPORT.min_confidence, help=option_help("min_confidence")),
    consistency: str = typer.Option(_EXPORT.consistency, "--consistency", help=option_help("consistency")),
    drop_suspected_injection: bool = typer.Option(_EXPORT.drop_suspected_injection, "--drop-suspected-injection", help=option_help("drop_suspected_injection")),
    license: str = typer.Option(_EXPORT.license, "--license", help=option_help("license")),
    report: Optional[str] = typer.Option(None, "--report", help="Agreement report folder (its metrics.json) for the card; default: a metrics.json in RUN_DIR or one folder below it."),
) -> None:
    """Export a run as a Hugging Face data set: preferences / sft / revision_preferences / pointwise configs, train/test splits, a provenance card."""
    from flows.export import export_run

    with user_errors():
        out = export_run(run_dir, to_dir, repo_id, private, report, test_size=test_size, seed=seed, min_confidence=min_confidence, consistency=consistency, drop_suspected_injection=drop_suspected_injection, license=license)
    table = Table("config", *out["splits"], title=f"exported to {out['to_dir']}")
    for name, rows in out["rows"].items():
        table.add_row(name, *(str(rows.get(s, 0)) for s in out["splits"]))
    console.print(table)
    from aifeedback.export import count_line

    for name, counts in out["counts"].items():
        console.print(f"{name}: {count_line(name, counts, ExportOptions(test_size=test_size, seed=seed, min_confidence=min_confidence, consistency=consistency, drop_suspected_injection=drop_suspected_injection, license=license))}")
    for note in out["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for path in out["agreement_reports"]:
        console.print(f"agreement report cited: {path}")
    if "hub" in out:
        console.print(f"[green]pushed[/] to {out['hub']}")


@app.command()
def runs(
    limit: int = typer.Option(20, help="How many runs, newest first."),
    flow: Optional[str] = typer.Option(None, help=f"Only runs of this flow: {', '.join(FLOWS)}."),
    deployment: Optional[str] = typer.Option(None, help="Only runs of this deployment."),
    upcoming: bool = typer.Option(False, help="Include runs scheduled for the future."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Instead: this run store's stage invocations with their tokens and cost (history.jsonl, usage.jsonl)."),
) -> None:
    """Recent flow runs and their states, from the Prefect API (or, with --run-dir, a run's tokens and cost)."""
    if run_dir is not None:
        _run_usage(run_dir, as_json)
        return
    from aifeedback.prefect_server import command_api
    from flows.common import prefect_wanted
    from flows.schedule import recent_runs

    if not prefect_wanted(STATE["prefect"]):
        fail(ConfigError("no Prefect API is configured, so commands ran without Prefect and recorded their runs in each run store: pass --run-dir RUN (its history.jsonl), or use Prefect (`aifeedback server start`, PREFECT_API_URL or --prefect)"))
    try:
        with user_errors(), command_api():  # where the commands recorded their runs
            rows = recent_runs(limit=limit, flow=flow, deployment=deployment, upcoming=upcoming)
    except Exception as exc:  # httpx errors: the server is down or the URL is wrong
        if "connect" not in type(exc).__name__.lower() and "connect" not in str(exc).lower():
            raise
        fail(RuntimeError(f"cannot reach the Prefect API ({exc}); check PREFECT_API_URL, or unset it to use the shared local server (`aifeedback server start`)"))
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return
    table = Table("flow", "deployment", "run", "state", "start", "seconds")
    for r in rows:
        table.add_row(r["flow"], r["deployment"] or "-", r["run"], r["state"] or "-", r["start"] or r["expected_start"] or "-", str(r["seconds"] or "-"))
    console.print(table)


def _run_usage(run_dir: str, as_json: bool) -> None:
    """``runs --run-dir``: each stage invocation's tokens and cost, and the run's totals per stage."""
    from aifeedback.usage import invocation_rows, totals

    if not (Path(run_dir) / "history.jsonl").is_file():
        fail(ConfigError(f"{run_dir} holds no history.jsonl; pass --run-dir with a run directory a stage has written"))
    from aifeedback.batch_files import BatchBook, stages_with_batches

    rows, tot = invocation_rows(run_dir), totals(run_dir)
    batches = {s: BatchBook(run_dir, s).summary() for s in stages_with_batches(run_dir)}
    if as_json:
        print(json.dumps({"invocations": rows, "totals": tot, "batches": batches}, indent=1, default=str))
        return
    cols = ("time", "stage", "n_in", "n_out", "batches_computed", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "concurrency")
    table = Table(*cols, title=f"{run_dir}: stage runs")
    for r in rows:
        table.add_row(*("-" if r.get(c) is None else str(r.get(c)) for c in cols))
    console.print(table)
    for stage, t in tot.items():
        cost = "not priced (set backend.prices)" if t["cost_usd"] is None else f"${t['cost_usd']:.6f}"
        via = f" ({t['batch_api_requests']} of them through the Batch API, at its prices)" if t.get("batch_api_requests") else ""
        console.print(f"{stage}: {t['batches']} batches, {t['requests']} requests{via}, {t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens{'' if t['exact'] else ' (some counts missing)'}, {cost}")
    for stage, states in batches.items():
        console.print(f"{stage} batches: " + "; ".join(f"{state} {v['batches']} ({v['requests']} requests{', ' + str(v['failed_requests']) + ' failed' if v['failed_requests'] else ''})" for state, v in sorted(states.items())))


def config_classes() -> dict[str, type]:
    """Every config model by class name: the stage configs, their sections, each backend kind's, the trainers', AlpacaEval import's."""
    import aifeedback.config as C
    from labelers.alpaca_eval import AlpacaEvalConfig

    models = [getattr(C, n) for n in C.__all__]
    out = {m.__name__: m for m in models if isinstance(m, type) and issubclass(m, C.StrictModel) and m is not C.StrictModel}
    return out | {c.__name__: c for c in (RewardConfig, RLConfig, DPOTrainConfig, AlpacaEvalConfig)}


@app.command("config")
def show_config(name: str = typer.Argument(..., help="Config class, e.g. LabelConfig, BackendConfig (every backend kind) or OpenAIBackendConfig.")) -> None:
    """Print a config's keys, defaults and descriptions (JSON schema)."""
    from pydantic import TypeAdapter

    from aifeedback.config import AnyBackendConfig

    classes = config_classes()
    if name not in classes:
        fail(ConfigError(f"unknown config {name!r}; one of {', '.join(sorted(classes))}"))
    schema = TypeAdapter(AnyBackendConfig).json_schema() if name == "BackendConfig" else classes[name].model_json_schema()
    console.print_json(json.dumps(schema))


@app.command()
def view(
    run_dir: str = typer.Argument(..., help="A labelled run directory (its --run-dir)."),
    out: Optional[str] = typer.Option(None, "--out", help="HTML file to write; default RUN_DIR/view.html."),
    report: Optional[str] = typer.Option(None, "--report", help="Agreement report folder whose human labels the page shows; default: one in RUN_DIR or one folder below it."),
) -> None:
    """Write one self-contained HTML page of a run's labelled pairs and revision chains (opens from disk, offline)."""
    from labelers.viewer import write_viewer

    with user_errors():
        path, data = write_viewer(run_dir, out, report)
    human = f", {data['n_human']} with a human label" if data["human_source"] else ""
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(data['pairs'])} labelled pairs, {len(data['excluded'])} excluded, {len(data['chains'])} revision chains{human}")
    console.print(f"open {path.as_uri()}", soft_wrap=True)
