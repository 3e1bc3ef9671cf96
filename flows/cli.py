"""The ``aifeedback`` command line (Typer + Rich). Flows are imported lazily so ``--help`` is instant."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from aifeedback.errors import AIFeedbackError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RLAIF data generation: generate, revise, label both orders, report, export.")
console = Console()

RunDir = typer.Option("runs/default", "--run-dir", help="Run directory (one per run; stages resume inside it).")
ConfigPath = typer.Option(None, "--config", "-c", help="YAML config for the stage; flags override it.")
Sets = typer.Option(None, "--set", help="Override any config key: --set sampling.temperature=0.3 (repeatable).")
BackendKind = typer.Option(None, "--backend", help="transformers, openai, vllm, or module:Class (a backend of your own).")
Model = typer.Option(None, "--model", help="Model id, local folder or served model name.")
BaseUrl = typer.Option(None, "--base-url", help="openai backend: endpoint, e.g. http://127.0.0.1:8000/v1.")


def _overrides(sets: list[str] | None, **flat) -> dict:
    from aifeedback.config import _merge, _set_dotted, parse_overrides

    out: dict = {}
    for dotted, value in flat.items():
        if value is not None:
            _set_dotted(out, dotted.replace("__", "."), value)
    return _merge(out, parse_overrides(sets))


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _run_flow(module: str, name: str, **kwargs) -> dict:
    """Import a flow lazily, run it, print its summary; errors become a clear message and exit code 2."""
    import importlib

    try:
        result = getattr(importlib.import_module(module), name)(**kwargs)
    except AIFeedbackError as exc:
        _fail(exc)
    _summary(result)
    return result


def _summary(summary: dict) -> None:
    table = Table(show_header=False)
    for k, v in summary.items():
        table.add_row(str(k), str(v))
    console.print(table)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check this machine before a long run: CPU, torch, cache disk, backends, embedded models, Prefect, Ray.

    Exits 1 when something a stage needs is broken.
    """
    from rich.markup import escape

    from aifeedback.doctor import as_dicts, run_checks

    checks = run_checks()
    if as_json:
        print(json.dumps(as_dicts(checks), indent=1))
    else:
        colour = {"ok": "green", "info": "dim", "warn": "yellow", "fail": "bold red"}
        table = Table("check", "status", "detail", title="aifeedback doctor")
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
        console.print(table)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        if not as_json:
            console.print(f"[bold red]broken:[/] {', '.join(failed)}")
        raise typer.Exit(1)


@app.command()
def models(convert: bool = typer.Option(True, help="Convert the embedded GGUF now if it is not cached yet (about 40 s once).")) -> None:
    """Show what each default model resolves to."""
    from aifeedback.models import describe_defaults
    from aifeedback.paths import cache_dir

    try:
        rows = describe_defaults(convert=convert)
    except AIFeedbackError as exc:
        _fail(exc)
    table = Table("role", "model", "resolves to", "status", title=f"cache: {cache_dir()}")
    for r in rows:
        table.add_row(r["role"], r["model"], r["path"], r["status"])
    console.print(table)


@app.command()
def generate(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Prompt set (datasets folder, Parquet, JSONL, CSV)."),
    prompt_column: Optional[str] = typer.Option(None, help="Column holding the prompt (text or chat messages)."),
    n: Optional[int] = typer.Option(None, "--n", help="Responses per prompt."),
    limit: Optional[int] = typer.Option(None, help="Only the first N prompts."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Most tokens per response."),
    seed: Optional[int] = typer.Option(None, help="Base seed."),
    backend: Optional[str] = BackendKind,
    model: Optional[str] = Model,
    base_url: Optional[str] = BaseUrl,
    max_batches: Optional[int] = typer.Option(None, help="Compute at most this many new batches, then stop (resume later)."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Generate n responses per prompt into the run store."""
    ov = _overrides(
        set_,
        input=input,
        prompt_column=prompt_column,
        limit=limit,
        sampling__n=n,
        sampling__max_new_tokens=max_new_tokens,
        sampling__seed=seed,
        backend__kind=backend,
        backend__model=model,
        backend__base_url=base_url,
    )
    _run_flow("flows.generate", "generate_flow", run_dir=run_dir, config_path=str(config) if config else None, overrides=ov, max_batches=max_batches)


@app.command()
def label(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Pairs file; default: pairs from this run's responses."),
    method: Optional[str] = typer.Option(None, help="pairwise or pointwise."),
    orders: Optional[str] = typer.Option(None, help="both (default) or single (baseline)."),
    calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate", help="Contextual calibration of the option prior."),
    cot: Optional[bool] = typer.Option(None, "--cot/--no-cot", help="Chain-of-thought rationale before scoring."),
    few_shot: Optional[bool] = typer.Option(None, "--few-shot/--no-few-shot", help="Include the template's exemplars."),
    constitution: Optional[str] = typer.Option(None, help="Constitution id or path for choice principles."),
    principles: Optional[str] = typer.Option(None, help="sample or ensemble."),
    limit: Optional[int] = typer.Option(None, help="Only the first N pairs."),
    backend: Optional[str] = BackendKind,
    model: Optional[str] = Model,
    base_url: Optional[str] = BaseUrl,
    max_batches: Optional[int] = typer.Option(None, help="Compute at most this many new batches, then stop."),
    runner: str = typer.Option("sequential", help="Where batches run: sequential, threads, or ray (sharded over Ray workers; each writes its own shards)."),
    workers: Optional[int] = typer.Option(None, help="threads/ray: workers (a local Ray cluster gets this many CPUs)."),
    ray_address: Optional[str] = typer.Option(None, help="ray: an existing cluster (auto, or ray://HOST:10001); default starts a local one."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Label preference pairs with the AI labeler, both orders by default."""
    ov = _overrides(
        set_,
        input=input,
        method=method,
        orders=orders,
        calibrate=calibrate,
        cot=cot,
        few_shot=few_shot,
        constitution=constitution,
        principles=principles,
        limit=limit,
        backend__kind=backend,
        backend__model=model,
        backend__base_url=base_url,
    )
    _run_flow("flows.label", "label_flow", run_dir=run_dir, config_path=str(config) if config else None, overrides=ov, max_batches=max_batches, runner=runner, workers=workers, ray_address=ray_address)


@app.command()
def revise(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    constitution: Optional[str] = typer.Option(None, help="Constitution id or YAML path."),
    rounds: Optional[int] = typer.Option(None, help="Critique -> revise rounds per response."),
    few_shot: Optional[bool] = typer.Option(None, "--few-shot/--no-few-shot", help="Use the constitution's exemplars."),
    filter_regex: Optional[str] = typer.Option(None, help="Revise only responses matching this regex."),
    limit: Optional[int] = typer.Option(None, help="Only the first N responses."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Most tokens per critique or revision."),
    backend: Optional[str] = BackendKind,
    model: Optional[str] = Model,
    base_url: Optional[str] = BaseUrl,
    max_batches: Optional[int] = typer.Option(None, help="Compute at most this many new batches, then stop."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Critique and revise this run's responses under a constitution."""
    ov = _overrides(
        set_,
        constitution=constitution,
        rounds=rounds,
        few_shot=few_shot,
        filter_regex=filter_regex,
        limit=limit,
        sampling__max_new_tokens=max_new_tokens,
        backend__kind=backend,
        backend__model=model,
        backend__base_url=base_url,
    )
    _run_flow("flows.revise", "revise_flow", run_dir=run_dir, config_path=str(config) if config else None, overrides=ov, max_batches=max_batches)


constitution_app = typer.Typer(help="Validate and show constitution files.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")


@constitution_app.command("validate")
def constitution_validate(file: str = typer.Argument(..., help="Constitution YAML path or shipped id.")) -> None:
    """Check a constitution: unique ids, non-empty texts, known placeholders, no unknown keys."""
    from aifeedback.constitution import load_constitution

    try:
        con, _ = load_constitution(file)
    except AIFeedbackError as exc:
        _fail(exc)
    console.print(f"[green]ok[/] {con.id} v{con.version}: {len(con.critique_revision)} critique/revision pairs, {len(con.choice)} choice principles, {len(con.exemplars)} exemplars; sha256 {con.sha256[:16]}")


@constitution_app.command("show")
def constitution_show(file: str = typer.Argument(..., help="Constitution YAML path or shipped id.")) -> None:
    """Print a constitution's principles."""
    from aifeedback.constitution import load_constitution

    try:
        con, _ = load_constitution(file)
    except AIFeedbackError as exc:
        _fail(exc)
    console.print(f"[bold]{con.id}[/] v{con.version}: {con.description.strip()}")
    t = Table("id", "critique", "revision", title="critique / revision pairs")
    for p in con.critique_revision:
        t.add_row(p.id, p.critique, p.revision)
    console.print(t)
    t = Table("id", "question", title="choice principles")
    for p in con.choice:
        t.add_row(p.id, p.question)
    console.print(t)


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
    _run_flow("flows.agreement", "agreement_flow", human=human, human_format=human_format, runs=run, judges=judge, out_dir=out, human_limit=human_limit, human_seed=human_seed, human_id_column=human_id_column, human_label_column=human_label_column)


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

    try:
        items = load_human(fmt, src, limit, seed)
    except AIFeedbackError as exc:
        _fail(exc)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"pair_id": it["pair_id"], "prompt": it["messages"], "response_a": it["response_a"], "response_b": it["response_b"], "human": it["human"], "source": it.get("source")}, ensure_ascii=False) + "\n")
    console.print(f"wrote {len(items)} pairs to {out}")


@app.command("train-rm")
def train_rm(
    run_dir: str = RunDir,
    out: str = typer.Option(..., "--out", help="Folder for the model, its card and its config."),
    labels: Optional[str] = typer.Option(None, help="soft (default) or hard."),
    human: Optional[str] = typer.Option(None, help="Human labels for held-out evaluation (joined by pair id)."),
    human_format: str = typer.Option("hh", help="hh, pandalm, llmbar or generic."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Distilled RLAIF: train a reward model on this run's AI soft labels."""
    ov = _overrides(set_, labels=labels)
    _run_flow("flows.train", "train_rm_flow", run_dir=run_dir, out_dir=out, overrides=ov, human=human, human_format=human_format)


@app.command("train-rl")
def train_rl(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy and its reward curve."),
    reward: str = typer.Option("direct", help="rm (a trained reward model) or direct (the labeler's 1-10 score)."),
    reward_model: Optional[str] = typer.Option(None, help="rm: folder from `aifeedback train-rm`."),
    prompts: Optional[str] = typer.Option(None, help="Prompt file; default data/prompts."),
    limit: int = typer.Option(8, help="Prompts used."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """RL on AI feedback (GRPO with a KL penalty to the reference policy)."""
    ov = _overrides(set_, reward=reward, reward_model=reward_model)
    _run_flow("flows.train", "train_rl_flow", out_dir=out, prompts_file=prompts, overrides=ov, limit=limit)


@app.command("train-dpo")
def train_dpo(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="A labelled run: its AI labels become DPO pairs."),
    preferences: Optional[str] = typer.Option(None, help="Or a Parquet file in TRL columns (prompt, chosen, rejected)."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """DPO on AI-labelled pairs through TRL (confidence filter; soft labels as label smoothing)."""
    ov = _overrides(set_)
    _run_flow("flows.train", "train_dpo_flow", out_dir=out, run_dir=run_dir, preferences=preferences, overrides=ov)


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
    consistent_only: bool = typer.Option(_EXPORT.consistent_only, "--consistent-only", help=option_help("consistent_only")),
    drop_suspected_injection: bool = typer.Option(_EXPORT.drop_suspected_injection, "--drop-suspected-injection", help=option_help("drop_suspected_injection")),
    license: str = typer.Option(_EXPORT.license, "--license", help=option_help("license")),
    report: Optional[str] = typer.Option(None, "--report", help="Agreement report folder (its metrics.json) for the card; default: a metrics.json in RUN_DIR or one folder below it."),
) -> None:
    """Export a run as a Hugging Face data set: preferences / sft / revision_preferences / pointwise configs, train/test splits, a provenance card."""
    from flows.export import export_run

    try:
        out = export_run(run_dir, to_dir, repo_id, private, report, test_size=test_size, seed=seed, min_confidence=min_confidence, consistent_only=consistent_only, drop_suspected_injection=drop_suspected_injection, license=license)
    except AIFeedbackError as exc:
        _fail(exc)
    table = Table("config", *out["splits"], title=f"exported to {out['to_dir']}")
    for name, rows in out["rows"].items():
        table.add_row(name, *(str(rows.get(s, 0)) for s in out["splits"]))
    console.print(table)
    from aifeedback.export import count_line

    for name, counts in out["counts"].items():
        console.print(f"{name}: {count_line(name, counts, ExportOptions(test_size=test_size, seed=seed, min_confidence=min_confidence, consistent_only=consistent_only, drop_suspected_injection=drop_suspected_injection, license=license))}")
    for note in out["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for path in out["agreement_reports"]:
        console.print(f"agreement report cited: {path}")
    if "hub" in out:
        console.print(f"[green]pushed[/] to {out['hub']}")


@app.command()
def schedule(
    flow: str = typer.Argument(..., help="Flow to schedule: label, generate, revise, agreement, pipeline, export or demo."),
    cron: Optional[str] = typer.Option(None, help="Cron schedule, e.g. '0 2 * * *' (UTC)."),
    interval: Optional[float] = typer.Option(None, help="Or an interval in seconds."),
    name: Optional[str] = typer.Option(None, help="Deployment name (default FLOW-scheduled)."),
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    set_: Optional[list[str]] = Sets,
    limit: int = typer.Option(1, help="Most runs of this deployment at once (1: a run that outlasts the interval is not overlapped)."),
) -> None:
    """Serve a scheduled deployment of a flow here (needs a running Prefect server: PREFECT_API_URL; Ctrl-C stops)."""
    from aifeedback.config import parse_overrides
    from flows.schedule import flow_parameters, serve_flow

    try:
        params = flow_parameters(flow, run_dir, str(config) if config else None, parse_overrides(set_))
        serve_flow(flow, cron=cron, interval=interval, deployment=name, parameters=params, limit=limit)
    except AIFeedbackError as exc:
        _fail(exc)


@app.command()
def runs(
    limit: int = typer.Option(20, help="How many runs, newest first."),
    flow: Optional[str] = typer.Option(None, help="Only runs of this flow (label, pipeline, ...)."),
    deployment: Optional[str] = typer.Option(None, help="Only runs of this deployment."),
    upcoming: bool = typer.Option(False, help="Include runs scheduled for the future."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recent flow runs and their states, from the Prefect API."""
    from flows.schedule import recent_runs

    try:
        rows = recent_runs(limit=limit, flow=flow, deployment=deployment, upcoming=upcoming)
    except Exception as exc:  # httpx errors: the server is down or the URL is wrong
        if "connect" not in type(exc).__name__.lower() and "connect" not in str(exc).lower():
            raise
        _fail(RuntimeError(f"cannot reach the Prefect API ({exc}); start a server (`prefect server start --host 127.0.0.1`) and export PREFECT_API_URL"))
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return
    table = Table("flow", "deployment", "run", "state", "start", "seconds")
    for r in rows:
        table.add_row(r["flow"], r["deployment"] or "-", r["run"], r["state"] or "-", r["start"] or r["expected_start"] or "-", str(r["seconds"] or "-"))
    console.print(table)


@app.command("config")
def show_config(name: str = typer.Argument(..., help="Config class, e.g. GenerateConfig.")) -> None:
    """Print a stage config's keys, defaults and descriptions."""
    import aifeedback.config as C

    cls = getattr(C, name, None)
    if cls is None or not isinstance(cls, type):
        _fail(ValueError(f"unknown config {name!r}; try GenerateConfig, BackendConfig, SamplingConfig"))
    console.print_json(json.dumps(cls.model_json_schema()))


@app.command()
def demo(
    run_dir: str = typer.Option("runs/demo", "--run-dir", help="Where the demo run goes."),
    prompts: int = typer.Option(4, help="How many prompts from data/prompts."),
) -> None:
    """Run the demo pipeline on the embedded default models and print where its outputs are."""
    try:
        from flows.demo import demo_flow

        t0 = time.perf_counter()
        out = demo_flow(run_dir=run_dir, n_prompts=prompts)
    except AIFeedbackError as exc:
        _fail(exc)
    console.print(f"\n[bold green]demo finished in {time.perf_counter() - t0:.0f} s[/]. Outputs:")
    for k, v in out.items():
        console.print(f"  {k}: {v}")


def main() -> None:  # pragma: no cover
    try:
        app()
    except AIFeedbackError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
