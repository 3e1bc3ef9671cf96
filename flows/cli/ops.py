"""Operations: doctor, models, the shared Prefect server, constitutions, schedules, the demo."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.schedule import FLOWS

from .app import ConfigPath, RunDir, Sets, app, console, run_flow, user_errors


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

    with user_errors():
        rows = describe_defaults(convert=convert)
    table = Table("role", "model", "resolves to", "status", title=f"cache: {cache_dir()}")
    for r in rows:
        table.add_row(r["role"], r["model"], r["path"], r["status"])
    console.print(table)


server_app = typer.Typer(help="A shared local Prefect server: while it runs, stage commands run as Prefect flows and show in its UI (aifeedback/prefect_server.py).", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start() -> None:
    """Start the shared Prefect server in the background (or report the running one)."""
    from aifeedback import prefect_server

    with user_errors():
        running = prefect_server.status()
        st = running or prefect_server.start()
    console.print(f"{'running' if running else 'started'}: pid {st['pid']}, API {st['api_url']}, UI {st['ui_url']}, log {st['log']}")
    console.print("stage commands now run as Prefect flows on it, shown in the UI, until `aifeedback server stop`")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the shared Prefect server (the next stage command starts it again)."""
    from aifeedback import prefect_server

    st = prefect_server.stop()
    console.print(f"stopped: pid {st['pid']} ({st['api_url']})" if st else "no shared Prefect server is running")


@server_app.command("status")
def server_status(as_json: bool = typer.Option(False, "--json", help="Print the state as JSON.")) -> None:
    """Show the shared Prefect server; exits 1 when none is running."""
    from aifeedback import prefect_server

    st = prefect_server.status()
    configured = None
    with contextlib.suppress(Exception):
        configured = prefect_server.configured_api_url()
    if as_json:
        print(json.dumps({"running": st is not None, **(st or {}), "configured_api_url": configured}, indent=1))
    elif st:
        console.print(f"running: pid {st['pid']}, API {st['api_url']}, UI {st['ui_url']}, since {st['started']}, log {st['log']}")
    else:
        console.print("no shared Prefect server is running: stage commands run in-process without Prefect (`aifeedback server start`, PREFECT_API_URL or --prefect runs them as Prefect flows)")
    if configured and not as_json:
        console.print(f"note: PREFECT_API_URL is configured ({configured}); commands use it, not the shared server")
    if st is None:
        raise typer.Exit(1)


constitution_app = typer.Typer(help="Validate and show constitution files.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")


@constitution_app.command("validate")
def constitution_validate(file: str = typer.Argument(..., help="Constitution YAML path or shipped id.")) -> None:
    """Check a constitution: unique ids, non-empty texts, known placeholders, no unknown keys."""
    from aifeedback.constitution import load_constitution

    with user_errors():
        con, _ = load_constitution(file)
    console.print(f"[green]ok[/] {con.id} v{con.version}: {len(con.critique_revision)} critique/revision pairs, {len(con.choice)} choice principles, {len(con.exemplars)} exemplars; sha256 {con.sha256[:16]}")


@constitution_app.command("show")
def constitution_show(file: str = typer.Argument(..., help="Constitution YAML path or shipped id.")) -> None:
    """Print a constitution's principles."""
    from aifeedback.constitution import load_constitution

    with user_errors():
        con, _ = load_constitution(file)
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
def schedule(
    flow: str = typer.Argument(..., help=f"Flow to schedule: {', '.join(FLOWS)}."),
    cron: Optional[str] = typer.Option(None, help="Cron schedule, e.g. '0 2 * * *' (UTC)."),
    interval: Optional[float] = typer.Option(None, help="Or an interval in seconds."),
    name: Optional[str] = typer.Option(None, help="Deployment name (default FLOW-scheduled)."),
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    set_: Optional[list[str]] = Sets,
    limit: int = typer.Option(1, help="Most runs of this deployment at once (1: a run that outlasts the interval is not overlapped)."),
) -> None:
    """Serve a scheduled deployment of a flow here (on PREFECT_API_URL, else the shared local server; Ctrl-C stops)."""
    from aifeedback.config import parse_overrides
    from aifeedback.prefect_server import command_api
    from flows.schedule import flow_parameters, serve_flow

    with user_errors(), command_api():  # the configured API, else the shared local server, which can fire schedules
        params = flow_parameters(flow, run_dir, str(config) if config else None, parse_overrides(set_))
        serve_flow(flow, cron=cron, interval=interval, deployment=name, parameters=params, limit=limit)


@app.command()
def demo(
    run_dir: str = typer.Option("runs/demo", "--run-dir", help="Where the demo run goes."),
    prompts: int = typer.Option(4, help="How many prompts from data/prompts."),
) -> None:
    """The demo on the embedded models: generate, revise, label; agreement on a human gold slice; export; a viewer page."""
    from flows.demo import show

    t0 = time.perf_counter()
    out = run_flow("flows.demo", "run_demo", show=False, run_dir=run_dir, n_prompts=prompts)  # in-process, or a Prefect flow when Prefect is configured
    console.print(f"\n[bold green]demo pipeline finished in {time.perf_counter() - t0:.0f} s[/]. Outputs:")
    for k, v in out.items():
        console.print(f"  {k}: {v}", soft_wrap=True)
    console.print()
    with user_errors():
        show(out, console)
