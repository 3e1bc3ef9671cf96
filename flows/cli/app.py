"""The ``aifeedback`` Typer app: its global options, error handling, and how a command runs its flow.

A command runs its plain function in this process, with no Prefect, unless Prefect
earns its keep (:func:`flows.common.prefect_wanted`): ``--prefect``, a configured
Prefect API, or a shared server started by ``aifeedback server start``. Then it runs
the same function as a Prefect flow (flows/prefect_flows.py) and shows in the UI.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aifeedback.config import field_of
from aifeedback.errors import AIFeedbackError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RLAIF data generation: generate, revise, label both orders, report, export.")
console = Console()
OUR_PACKAGES = ("aifeedback", "labelers", "trainers", "flows")
_PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # the repository, or site-packages: the four packages are siblings
# per invocation: --debug, --prefect, and the running command's config class and flags (to name them in errors)
STATE: dict[str, Any] = {"debug": False, "prefect": False, "config": None, "flags": {}}


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", envvar="AIFEEDBACK_DEBUG", help="Show the traceback of an error, not just its one line (or set AIFEEDBACK_DEBUG=1)."),
    prefect: bool = typer.Option(False, "--prefect", envvar="AIFEEDBACK_PREFECT", help="Run as a Prefect flow, shown in the UI, even with no Prefect API configured (the shared local server starts if none runs). Without it, a command uses Prefect only when PREFECT_API_URL is set (environment or Prefect profile) or `aifeedback server start` is running."),
) -> None:
    STATE["debug"], STATE["prefect"] = debug, prefect


def _raised_in_our_code(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is in this project's packages (not in a library)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(_PACKAGES_ROOT) and path.relative_to(_PACKAGES_ROOT).parts[0] in OUR_PACKAGES


def is_user_error(exc: BaseException) -> bool:
    """A problem with what the user gave: one of ours (AIFeedbackError), or a ValueError our own code raised on checking input.

    A ValueError from inside a library is a bug, and keeps its traceback.
    """
    return isinstance(exc, AIFeedbackError) or (isinstance(exc, ValueError) and _raised_in_our_code(exc))


_KEY = re.compile(r"`([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)`")


def with_flags(text: str) -> str:
    """Core errors name config keys in backticks (`backend.kind`); add what this command's user types for each:
    its flag (`backend.kind` (--backend)), else ``--set`` (`label.backend.kind` (--set label.backend.kind=VALUE))."""
    cls, flags = STATE["config"], STATE["flags"]

    def one(m: re.Match) -> str:
        key = m.group(1)
        if key in flags:
            return f"{m.group(0)} ({flags[key]})"
        if cls is not None and field_of(cls, key) is not None:
            return f"{m.group(0)} (--set {key}=VALUE)"
        return m.group(0)

    return _KEY.sub(one, text)


def fail(exc: Exception) -> None:
    hint = " (--debug shows the traceback)" if isinstance(exc, ValueError) and not isinstance(exc, AIFeedbackError) else ""
    console.print(f"[bold red]error:[/] {escape(with_flags(str(exc)))}{hint}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors():
    """Turn a user error into one line and exit code 2; anything else (a bug) keeps its traceback, and --debug keeps them all."""
    try:
        yield
    except (AIFeedbackError, ValueError) as exc:
        if STATE["debug"] or not is_user_error(exc):
            raise
        fail(exc)


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed run's traceback; for a user error the CLI's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = _NoUserErrorTraceback()


def _log_to_terminal() -> None:
    """The stage driver's log lines on stderr, as Prefect's console shows them in a flow run."""
    lg = logging.getLogger("aifeedback")
    if not any(getattr(h, "_aifeedback", False) for h in lg.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"))
        h._aifeedback = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    lg.setLevel(logging.INFO)


def run_flow(module: str, name: str, show: bool = True, **kwargs) -> dict:
    """Run a command's function (``module:name``), as a Prefect flow when Prefect is wanted; print its summary.
    User errors become one line and exit code 2."""
    from flows.common import prefect_wanted

    if not prefect_wanted(STATE["prefect"]):
        _log_to_terminal()
        with user_errors():
            result = getattr(importlib.import_module(module), name)(**kwargs)
    else:
        for logger_name in ("prefect.flow_runs", "prefect.task_runs"):
            logger = logging.getLogger(logger_name)
            if STATE["debug"]:
                logger.removeFilter(_QUIET)
            else:
                logger.addFilter(_QUIET)
        from aifeedback.prefect_server import command_api

        with user_errors(), command_api():  # the configured Prefect API, else the shared local server (aifeedback server)
            from flows.prefect_flows import BY_FUNCTION

            result = BY_FUNCTION[name](**kwargs)
    if show:
        summary(result)
    return result


def summary(result: dict) -> None:
    table = Table(show_header=False)
    for k, v in result.items():
        table.add_row(str(k), str(v))
    console.print(table)


def opt(cls: type, key: str, *flags: str, **kwargs: Any) -> Any:
    """A command-line option for the config key ``key`` of ``cls`` (``sampling.n``, ``backend.base_url``), its help the key's ``Field`` description."""
    field = field_of(cls, key)
    if field is None or not field.description:
        raise KeyError(f"{cls.__name__} has no documented key {key!r}")
    return typer.Option(None, *flags, help=field.description, **kwargs)


RunDir = typer.Option("runs/default", "--run-dir", help="Run directory (one per run; stages resume inside it).")
ConfigPath = typer.Option(None, "--config", "-c", help="YAML config for the command; flags override it.")
Sets = typer.Option(None, "--set", help="Override any config key: --set sampling.temperature=0.3 (repeatable).")


def overrides_from(cls: type, params: dict) -> dict:
    """Overrides from a command's config options: the parameters named by a key of ``cls`` (``sampling__n``) that were given.

    Also records the command's config class and its flag for each key, so errors name what the user can type (:func:`with_flags`).
    """
    from typer.main import get_current_context  # typer's own click

    from aifeedback.config import _set_dotted

    ctx = get_current_context(silent=True)
    if ctx is not None:
        opts = [p for p in ctx.command.params if p.param_type_name == "option"]
        STATE["config"], STATE["flags"] = cls, {p.name.replace("__", "."): p.opts[0] for p in opts if field_of(cls, p.name.replace("__", ".")) is not None}

    out: dict = {}
    for name, value in params.items():
        key = name.replace("__", ".")
        if value is not None and field_of(cls, key) is not None:
            _set_dotted(out, key, value)
    return out


def checked_config(cls: type, config: Optional[Path], sets: Optional[list[str]], flags: dict) -> dict:
    """``config_path`` and ``overrides`` for a command's function, checked here first: a typo fails in a second, before any model loads."""
    from aifeedback.config import _merge, build_config, parse_overrides

    overrides = _merge(flags, parse_overrides(sets))
    path = str(config) if config else None
    build_config(cls, path, overrides)
    return {"config_path": path, "overrides": overrides}
