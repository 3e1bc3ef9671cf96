"""What the flows share: the submitter a stage's batches go to, in or out of a Prefect flow run.

Outside a Prefect flow run (a local command with no Prefect API configured) batches
go to the core submitters of :mod:`aifeedback.stage`, and Prefect is never imported.
Inside one, each batch is a Prefect task (one per batch, never one per item) on
Prefect's task runner for the runner named, so the batches show in the UI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from aifeedback.batches import Batch, BatchResult, StageJob, run_batch
from aifeedback.errors import ConfigError
from aifeedback.stage import RUNNERS, Submitter, make_submitter


def _profile_api_url() -> str | None:
    """PREFECT_API_URL in the active Prefect profile (``prefect config set``), read without importing Prefect."""
    import tomllib
    from pathlib import Path

    from aifeedback.prefect_server import prefect_home

    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or None


def prefect_wanted(flag: bool = False) -> bool:
    """Whether a command runs as a Prefect flow: ``--prefect``, a Prefect API configured (environment or
    profile), or a shared server started by ``aifeedback server start``. Otherwise it runs in-process, with no Prefect."""
    if flag or os.environ.get("PREFECT_API_URL") or _profile_api_url():
        return True
    from aifeedback import prefect_server

    return prefect_server.running() is not None


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow run (never imports Prefect to find out)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def submitter(runner: str = "sequential", workers: int | None = None, ray_address: str | None = None) -> Submitter:
    """The submitter for ``runner``: Prefect tasks inside a flow run, else the core's (no Prefect)."""
    if in_prefect_run():
        return PrefectTasks(runner, workers, ray_address)
    return make_submitter(runner, workers, ray_address)  # checks the runner's name


def _stage_batch_task() -> Callable[..., Any]:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="stage-batch", cache_policy=NO_CACHE, task_run_name="{job.stage}-{batch.index}")
    def stage_batch(store_root: str, job: StageJob, batch: Batch) -> BatchResult:
        """One batch: compute and write its shards (skipped when the shard exists)."""
        return run_batch(store_root, job, batch)

    return stage_batch


class PrefectTasks:
    """Each batch a Prefect task, on Prefect's task runner for ``runner`` (none: in this process; threads; prefect-ray)."""

    def __init__(self, runner: str, workers: int | None = None, ray_address: str | None = None):
        from prefect import get_run_logger

        self.name = f"prefect-{runner}"
        self.logger = get_run_logger()
        self._task = _stage_batch_task()
        self._runner = _task_runner(runner, workers, ray_address)
        self.max_in_flight = 1 if self._runner is None else 2 * (workers or os.cpu_count() or 1)

    def __enter__(self) -> "PrefectTasks":
        if self._runner is not None:
            self._runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc)

    def submit(self, fn: Callable[..., BatchResult], store_root: str, job: StageJob, batch: Batch) -> Any:
        if fn is not run_batch:
            raise ValueError("PrefectTasks runs run_batch only")
        if self._runner is None:
            from concurrent.futures import Future

            fut: Future = Future()
            fut.set_result(self._task(store_root, job, batch))
            return fut
        return self._runner.submit(self._task, parameters={"store_root": store_root, "job": job, "batch": batch})


def _task_runner(runner: str, workers: int | None, ray_address: str | None):
    if runner not in RUNNERS:
        raise ConfigError(f"runner: unknown value {runner!r}; use one of {', '.join(RUNNERS)}")
    if runner == "sequential":
        return None
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers or 4)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ConfigError("runner ray inside a Prefect flow needs prefect-ray: pip install 'aifeedback[ray]'") from None
    init: dict = {"include_dashboard": False, "log_to_driver": False}
    if not ray_address:
        init["num_cpus"] = workers or os.cpu_count() or 1
    api_url = _api_url()
    if api_url:  # workers report to this process's Prefect API instead of each starting a temporary server
        init["runtime_env"] = {"env_vars": {"PREFECT_API_URL": api_url}}
    return RayTaskRunner(address=ray_address, init_kwargs=init)


def _api_url() -> str | None:
    """The Prefect API this process talks to: the configured one, or its temporary server's."""
    from prefect.settings import get_current_settings

    url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if url:
        return str(url)
    try:
        from prefect.server.api.server import SubprocessASGIServer

        running = [srv for srv in SubprocessASGIServer._instances.values() if srv.running]
        return running[0].api_url if running else None
    except Exception:  # a Prefect without that class: workers fall back to their own temporary server
        return None
