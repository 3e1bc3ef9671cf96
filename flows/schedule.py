"""Scheduled flows and run history, through the Prefect API (Prefect stores no data of ours, only runs).

``serve_flow`` creates a deployment with a cron or interval schedule and serves it
in this process (Ctrl-C stops it); ``recent_runs`` lists flow runs and their states.
Schedules fire only against a real Prefect server (``prefect server start``): the
temporary per-process server cannot schedule.
"""

from __future__ import annotations

import os
from pathlib import Path

from aifeedback.errors import ConfigError

# Every flow, by its Prefect flow name: the one list that `aifeedback schedule`, `aifeedback runs`
# and prefect.yaml's entrypoints go by (tests/test_schedule.py checks the README and prefect.yaml against it).
FLOWS = {
    "generate": "flows.prefect_flows:generate_flow",
    "revise": "flows.prefect_flows:revise_flow",
    "label": "flows.prefect_flows:label_flow",
    "pipeline": "flows.prefect_flows:pipeline_flow",
    "agreement": "flows.prefect_flows:agreement_flow",
    "export": "flows.prefect_flows:export_flow",
    "demo": "flows.prefect_flows:demo_flow",
    "train-rm": "flows.prefect_flows:train_rm_flow",
    "train-rl": "flows.prefect_flows:train_rl_flow",
    "train-dpo": "flows.prefect_flows:train_dpo_flow",
}

NEED_SERVER = (
    "schedules need a long-lived Prefect server: unset AIFEEDBACK_PREFECT_SERVER=temporary to use the shared local one "
    "(`aifeedback server start`), or start one with `prefect server start --host 127.0.0.1` and export PREFECT_API_URL=http://127.0.0.1:4200/api "
    "(a temporary per-process server cannot fire schedules)"
)


def load_flow(name: str):
    import importlib

    if name not in FLOWS:
        raise ConfigError(f"unknown flow {name!r}; schedule one of {sorted(FLOWS)}")
    module, _, attr = FLOWS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


STAGE_FLOWS = ("generate", "revise", "label")


def flow_parameters(name: str, run_dir: str, config: str | None, sets: dict) -> dict:
    """The deployment's parameters for a flow, checked against the flow's own signature.

    Stage flows take ``run_dir``, ``config_path`` and ``overrides`` (the ``--set`` keys);
    the others take their parameters directly from ``--set`` (``pipeline``: ``--set
    label.batch_size=64``; ``export``: ``--set options.min_confidence=0.2``;
    ``agreement``: ``--set human=FILE --set runs=[ai=RUN]``; ``train-rm``: ``--set
    out_dir=DIR --set overrides.labels=hard``), ``--config`` goes to their
    ``config_path`` when they have one, and ``--run-dir`` to a ``run_dir`` they need.
    """
    import inspect

    fl = load_flow(name)
    accepts = inspect.signature(fl.fn).parameters
    run_dir = str(Path(run_dir).resolve())  # runs start in another process
    config_path = str(Path(config).resolve()) if config else None
    if name in STAGE_FLOWS:
        params = {"run_dir": run_dir, "config_path": config_path, "overrides": sets}
    else:
        if config and "config_path" not in accepts:
            raise ConfigError(f"--config applies only to flows that read a config file; give {name} its parameters with --set (it accepts: {', '.join(accepts)})")
        params = dict(sets)
        if config_path:
            params["config_path"] = config_path
        if "run_dir" in accepts and accepts["run_dir"].default is not None:  # optional run dirs (train-dpo) stay unset
            params.setdefault("run_dir", run_dir)
    try:
        fl.validate_parameters(params)
    except Exception as exc:
        accepted = ", ".join(accepts)
        raise ConfigError(f"parameters {sorted(params)} do not fit flow {name!r} ({type(exc).__name__}: {str(exc)[:300]}); it accepts: {accepted}") from None
    return params


def serve_flow(name: str, cron: str | None = None, interval: float | None = None, deployment: str | None = None, parameters: dict | None = None, limit: int | None = None) -> None:
    """Create (or update) a scheduled deployment of a flow and serve its runs here until interrupted."""
    from prefect.deployments.runner import EntrypointType

    from prefect.settings import get_current_settings

    if not (os.environ.get("PREFECT_API_URL") or get_current_settings().api.url):  # env or `prefect config set`
        raise ConfigError(NEED_SERVER)
    if (cron is None) == (interval is None):
        raise ConfigError("give exactly one of --cron '0 2 * * *' or --interval SECONDS")
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError as exc:
            raise ConfigError(f"invalid cron expression {cron!r}: {exc}; use five fields, e.g. '0 2 * * *'") from None
    fl = load_flow(name)
    fl.serve(
        name=deployment or f"{name}-scheduled",
        cron=cron,
        interval=interval,
        parameters=parameters or {},
        enforce_parameter_schema=True,
        limit=limit,
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_starting_message=True,
    )


def recent_runs(limit: int = 20, flow: str | None = None, deployment: str | None = None, upcoming: bool = False) -> list[dict]:
    """Recent flow runs, newest first: flow, deployment, name, state, start, duration.

    Runs scheduled for the future are left out unless ``upcoming`` (a served
    deployment keeps many future runs scheduled ahead).
    """
    import asyncio

    return asyncio.run(_recent_runs(limit, flow, deployment, upcoming))


async def _recent_runs(limit: int, flow: str | None, deployment: str | None, upcoming: bool) -> list[dict]:
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.datetime.now(datetime.timezone.utc)
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=None if upcoming else FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(before_=now)),
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])) if flow else None,
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])) if deployment else None,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
        flow_names = {f.id: f.name for f in await client.read_flows(limit=200)}
        dep_names: dict = {}
        for r in runs:
            if r.deployment_id and r.deployment_id not in dep_names:
                dep_names[r.deployment_id] = (await client.read_deployment(r.deployment_id)).name
    return [
        {
            "flow": flow_names.get(r.flow_id, str(r.flow_id)),
            "deployment": dep_names.get(r.deployment_id) if r.deployment_id else None,
            "run": r.name,
            "state": r.state_name or (r.state.type.value if r.state else None),
            "expected_start": r.expected_start_time.isoformat() if r.expected_start_time else None,
            "start": r.start_time.isoformat() if r.start_time else None,
            "seconds": round(r.total_run_time.total_seconds(), 1) if r.total_run_time else None,
            "parameters": r.parameters,
        }
        for r in runs
    ]
