"""Each stage's options, declared once: the stage command and its estimate are both built from here.

A :class:`ConfigOption` is a flag for a dotted config key; its help is the key's
``Field`` description. :func:`stage_command` turns a stage's table into a Typer
command (``aifeedback label``); with ``estimate=True`` the same table gives
``aifeedback estimate label``, which therefore accepts every option of the stage.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from aifeedback.config import (
    BackendConfig,
    GenerateConfig,
    LabelConfig,
    OpenAIBackendConfig,
    ReviseConfig,
    field_of,
)
from trainers.loop.config import LoopConfig

from .app import ConfigPath, RunDir, Sets


@dataclass(frozen=True)
class ConfigOption:
    """A flag for the config key ``key`` (``sampling.n``); its help is the ``Field`` of ``key`` in ``doc[0]`` (as ``doc[1]``) or in the stage's config."""

    key: str
    type: Any
    flags: tuple[str, ...]
    doc: tuple[type, str] | None = None

    @property
    def name(self) -> str:
        return self.key.replace(".", "__")

    def help(self, cls: type) -> str:
        owner, key = self.doc or (cls, self.key)
        field = field_of(owner, key)
        if field is None or not field.description:
            raise KeyError(f"{owner.__name__} has no documented key {key!r}")
        return field.description

    def parameter(self, cls: type) -> inspect.Parameter:
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, *self.flags, help=self.help(cls)), annotation=Optional[self.type])


@dataclass(frozen=True)
class Param:
    """A command parameter that is not a config key (``--max-batches``, ``--runner``): its name, type and Typer default."""

    name: str
    type: Any
    default: Any

    def parameter(self, cls: type) -> inspect.Parameter:
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=self.type)


BACKEND = (
    ConfigOption("backend.kind", str, ("--backend",), (BackendConfig, "kind")),
    ConfigOption("backend.model", str, ("--model",), (BackendConfig, "model")),
    ConfigOption("backend.base_url", str, ("--base-url",), (OpenAIBackendConfig, "base_url")),
    ConfigOption("backend.batch", bool, ("--batch/--no-batch",), (OpenAIBackendConfig, "batch")),
    ConfigOption("backend.batch_file_only", bool, ("--batch-file-only/--no-batch-file-only",), (OpenAIBackendConfig, "batch_file_only")),
)
MAX_BATCHES = Param("max_batches", Optional[int], typer.Option(None, "--max-batches", help="Compute at most this many new batches, then stop (a later run resumes)."))


@dataclass(frozen=True)
class Stage:
    """A stage command: its config, its options (config keys and others), and the function it runs."""

    name: str
    config: type
    options: tuple[ConfigOption | Param, ...]
    module: str
    function: str
    help: str

STAGES = {
    "generate": Stage(
        "generate",
        GenerateConfig,
        (
            ConfigOption("input", str, ("--input", "-i")),
            ConfigOption("prompt_column", str, ("--prompt-column",)),
            ConfigOption("sampling.n", int, ("--n",)),
            ConfigOption("limit", int, ("--limit",)),
            ConfigOption("sampling.max_new_tokens", int, ("--max-new-tokens",)),
            ConfigOption("sampling.seed", int, ("--seed",)),
            *BACKEND,
            MAX_BATCHES,
        ),
        "flows.generate",
        "run_generate",
        "Generate n responses per prompt into the run store.",
    ),
    "revise": Stage(
        "revise",
        ReviseConfig,
        (
            ConfigOption("constitution", str, ("--constitution",)),
            ConfigOption("rounds", int, ("--rounds",)),
            ConfigOption("few_shot", bool, ("--few-shot/--no-few-shot",)),
            ConfigOption("filter_regex", str, ("--filter-regex",)),
            ConfigOption("limit", int, ("--limit",)),
            ConfigOption("sampling.max_new_tokens", int, ("--max-new-tokens",)),
            *BACKEND,
            MAX_BATCHES,
        ),
        "flows.revise",
        "run_revise",
        "Critique and revise this run's responses under a constitution.",
    ),
    "label": Stage(
        "label",
        LabelConfig,
        (
            ConfigOption("input", str, ("--input", "-i")),
            ConfigOption("prompt_column", str, ("--prompt-column",)),
            ConfigOption("response_a_column", str, ("--response-a-column",)),
            ConfigOption("response_b_column", str, ("--response-b-column",)),
            ConfigOption("method", str, ("--method",)),
            ConfigOption("orders", str, ("--orders",)),
            ConfigOption("calibrate", bool, ("--calibrate/--no-calibrate",)),
            ConfigOption("cot", bool, ("--cot/--no-cot",)),
            ConfigOption("few_shot", bool, ("--few-shot/--no-few-shot",)),
            ConfigOption("constitution", str, ("--constitution",)),
            ConfigOption("principles", str, ("--principles",)),
            ConfigOption("limit", int, ("--limit",)),
            *BACKEND,
            Param("labeler", Optional[str], typer.Option(None, "--labeler", help=field_of(LoopConfig, "labeler").description)),
            Param("gold", Optional[str], typer.Option(None, "--gold", help=field_of(LoopConfig, "gold").description)),
            MAX_BATCHES,
            Param("runner", str, typer.Option("sequential", help="Where batches run: sequential, threads, or ray (sharded over Ray workers; each writes its own shards).")),
            Param("workers", Optional[int], typer.Option(None, help="threads/ray: workers (a local Ray cluster gets this many CPUs).")),
            Param("ray_address", Optional[str], typer.Option(None, help="ray: an existing cluster (auto, or ray://HOST:10001); default starts a local one.")),
        ),
        "flows.label",
        "run_label",
        "Label preference pairs with the AI labeler, both orders by default.",
    ),
}

COMMON = (
    Param("run_dir", str, RunDir),
    Param("config", Optional[Path], ConfigPath),
)
SETS = Param("set_", Optional[list[str]], Sets)
ESTIMATE = Param("estimate", bool, typer.Option(False, "--estimate", help="Print what the stage would send, cost and take (tokens, requests, cost at backend.prices, time at the rate limits), and stop: no model call. Items already in the run cost nothing."))
TOKENIZER = Param("tokenizer", Optional[str], typer.Option(None, "--tokenizer", help="--estimate: count with this model's tokenizer and chat template (a local folder or embedded name): exact when it is the served model's. Default: the transformers backend's own; for endpoints, about 4 characters a token."))
AS_JSON = Param("as_json", bool, typer.Option(False, "--json", help="--estimate: print JSON."))


def stage_command(stage: Stage, body: Callable[[Stage, dict], None], estimate: bool = False) -> Callable[..., None]:
    """The Typer command of ``stage`` (or of ``estimate STAGE``): every option of its table, then ``body(stage, params)``."""
    extra = (TOKENIZER, AS_JSON) if estimate else (ESTIMATE, TOKENIZER, AS_JSON)
    params = [p.parameter(stage.config) for p in (*COMMON, *stage.options, SETS, *extra)]

    def command(**kw: Any) -> None:
        if estimate:
            kw["estimate"] = True
        body(stage, kw)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = f"estimate_{stage.name}" if estimate else stage.name
    command.__doc__ = f"Estimate `aifeedback {stage.name}`: tokens, cost and time, with no model call (same as `aifeedback {stage.name} --estimate`)." if estimate else stage.help
    return command
