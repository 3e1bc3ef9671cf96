"""The ``aifeedback`` command line (Typer + Rich). Flows are imported lazily so ``--help`` is instant."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aifeedback.config import BackendConfig, GenerateConfig, LabelConfig, OpenAIBackendConfig, ReviseConfig, field_of
from aifeedback.errors import AIFeedbackError, ConfigError
from flows.schedule import FLOWS
from trainers.reward_config import RewardConfig
from trainers.loop_config import LoopConfig
from trainers.rl_config import DPOTrainConfig, RLConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RLAIF data generation: generate, revise, label both orders, report, export.")
console = Console()

# the config each command builds (--config FILE, --set key=value and its config options)
COMMAND_CONFIGS: dict[str, type] = {
    "generate": GenerateConfig,
    "revise": ReviseConfig,
    "label": LabelConfig,
    "train-rm": RewardConfig,
    "train-rl": RLConfig,
    "train-dpo": DPOTrainConfig,
    "loop": LoopConfig,
}
OUR_PACKAGES = ("aifeedback", "labelers", "trainers", "flows")
_PACKAGES_ROOT = Path(__file__).resolve().parents[1]  # the repository, or site-packages: the four packages are siblings
_DEBUG = {"on": False}


def opt(cls: type, key: str, *flags: str, **kwargs: Any) -> Any:
    """A command-line option for the config key ``key`` of ``cls`` (``sampling.n``, ``backend.base_url``), its help the key's ``Field`` description.

    Each parameter is documented once, in its config. Name the command's parameter by
    the key with ``__`` for dots (``sampling__n``): :func:`_flags` turns it into an override.
    """
    field = field_of(cls, key)
    if field is None or not field.description:
        raise KeyError(f"{cls.__name__} has no documented key {key!r}")
    return typer.Option(None, *flags, help=field.description, **kwargs)


RunDir = typer.Option("runs/default", "--run-dir", help="Run directory (one per run; stages resume inside it).")
MaxBatches = typer.Option(None, "--max-batches", help="Compute at most this many new batches, then stop (a later run resumes).")
ConfigPath = typer.Option(None, "--config", "-c", help="YAML config for the command; flags override it.")
Sets = typer.Option(None, "--set", help="Override any config key: --set sampling.temperature=0.3 (repeatable).")
BackendKind = opt(BackendConfig, "kind", "--backend")
Model = opt(BackendConfig, "model", "--model")
BaseUrl = opt(OpenAIBackendConfig, "base_url", "--base-url")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar="AIFEEDBACK_DEBUG", help="Show the traceback of an error, not just its one line (or set AIFEEDBACK_DEBUG=1).")) -> None:
    _DEBUG["on"] = debug


def _flags(cls: type, params: dict) -> dict:
    """Overrides from a command's config options: the parameters named by a key of ``cls`` (``sampling__n``) that were given."""
    from aifeedback.config import _set_dotted

    out: dict = {}
    for name, value in params.items():
        key = name.replace("__", ".")
        if value is not None and field_of(cls, key) is not None:
            _set_dotted(out, key, value)
    return out


def _config(command: str, config: Optional[Path], sets: Optional[list[str]], flags: dict) -> dict:
    """``config_path`` and ``overrides`` for a command's flow, checked here first: a typo fails in a second, before Prefect starts."""
    from aifeedback.config import _merge, build_config, parse_overrides

    overrides = _merge(flags, parse_overrides(sets))
    path = str(config) if config else None
    build_config(COMMAND_CONFIGS[command], path, overrides)
    return {"config_path": path, "overrides": overrides}


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


def _fail(exc: Exception) -> None:
    hint = " (--debug shows the traceback)" if isinstance(exc, ValueError) and not isinstance(exc, AIFeedbackError) else ""
    console.print(f"[bold red]error:[/] {escape(str(exc))}{hint}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors():
    """Turn a user error into one line and exit code 2; anything else (a bug) keeps its traceback, and --debug keeps them all."""
    try:
        yield
    except (AIFeedbackError, ValueError) as exc:
        if _DEBUG["on"] or not is_user_error(exc):
            raise
        _fail(exc)


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed run's traceback; for a user error the CLI's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = _NoUserErrorTraceback()


def _run_flow(module: str, name: str, **kwargs) -> dict:
    """Import a flow lazily, run it, print its summary; user errors become one line and exit code 2."""
    import importlib

    for logger_name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(logger_name)
        if _DEBUG["on"]:
            logger.removeFilter(_QUIET)
        else:
            logger.addFilter(_QUIET)
    from aifeedback.prefect_server import command_api

    with _user_errors(), command_api() as shared:  # the configured Prefect API, else the shared local server (aifeedback server)
        result = getattr(importlib.import_module(module), name)(**kwargs)
    _summary(result)
    if shared:
        _warm_host()
    return result


def _warm_host(wait: float = 0.0, replace: bool = False) -> dict | None:
    """Start the warm command host beside the shared server, if none matches this command (flows/warm.py); never fails the command."""
    from aifeedback import prefect_server
    from flows import warm

    try:
        st = prefect_server.status()
        return warm.start(int(st["pid"]), wait=wait, replace=replace) if st else None
    except Exception as e:  # the host only saves start-up time: the work is done
        logging.getLogger(__name__).warning("the warm command host did not start: %s", e)
        return None


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

    with _user_errors():
        rows = describe_defaults(convert=convert)
    table = Table("role", "model", "resolves to", "status", title=f"cache: {cache_dir()}")
    for r in rows:
        table.add_row(r["role"], r["model"], r["path"], r["status"])
    console.print(table)


@app.command()
def generate(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = opt(GenerateConfig, "input", "--input", "-i"),
    prompt_column: Optional[str] = opt(GenerateConfig, "prompt_column", "--prompt-column"),
    sampling__n: Optional[int] = opt(GenerateConfig, "sampling.n", "--n"),
    limit: Optional[int] = opt(GenerateConfig, "limit", "--limit"),
    sampling__max_new_tokens: Optional[int] = opt(GenerateConfig, "sampling.max_new_tokens", "--max-new-tokens"),
    sampling__seed: Optional[int] = opt(GenerateConfig, "sampling.seed", "--seed"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    max_batches: Optional[int] = MaxBatches,
    set_: Optional[list[str]] = Sets,
) -> None:
    """Generate n responses per prompt into the run store."""
    flags = _flags(GenerateConfig, locals())
    with _user_errors():
        cfg = _config("generate", config, set_, flags)
    _run_flow("flows.generate", "generate_flow", run_dir=run_dir, **cfg, max_batches=max_batches)


@app.command()
def label(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = opt(LabelConfig, "input", "--input", "-i"),
    prompt_column: Optional[str] = opt(LabelConfig, "prompt_column", "--prompt-column"),
    response_a_column: Optional[str] = opt(LabelConfig, "response_a_column", "--response-a-column"),
    response_b_column: Optional[str] = opt(LabelConfig, "response_b_column", "--response-b-column"),
    method: Optional[str] = opt(LabelConfig, "method", "--method"),
    orders: Optional[str] = opt(LabelConfig, "orders", "--orders"),
    calibrate: Optional[bool] = opt(LabelConfig, "calibrate", "--calibrate/--no-calibrate"),
    cot: Optional[bool] = opt(LabelConfig, "cot", "--cot/--no-cot"),
    few_shot: Optional[bool] = opt(LabelConfig, "few_shot", "--few-shot/--no-few-shot"),
    constitution: Optional[str] = opt(LabelConfig, "constitution", "--constitution"),
    principles: Optional[str] = opt(LabelConfig, "principles", "--principles"),
    limit: Optional[int] = opt(LabelConfig, "limit", "--limit"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    labeler: Optional[str] = opt(LoopConfig, "labeler", "--labeler"),
    gold: Optional[str] = opt(LoopConfig, "gold", "--gold"),
    max_batches: Optional[int] = MaxBatches,
    runner: str = typer.Option("sequential", help="Where batches run: sequential, threads, or ray (sharded over Ray workers; each writes its own shards)."),
    workers: Optional[int] = typer.Option(None, help="threads/ray: workers (a local Ray cluster gets this many CPUs)."),
    ray_address: Optional[str] = typer.Option(None, help="ray: an existing cluster (auto, or ray://HOST:10001); default starts a local one."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Label preference pairs with the AI labeler, both orders by default."""
    flags = _flags(LabelConfig, locals())
    with _user_errors():
        cfg = _config("label", config, set_, flags)
        if labeler not in (None, "llm"):
            LoopConfig(labeler=labeler)  # rm:PATH or llm, checked before Prefect starts
            from labelers.rm_labeler import check_reward_model_dir

            check_reward_model_dir(labeler[3:])
        elif gold:
            raise ConfigError("--gold fits a reward model labeler's temperature; pass --labeler rm:PATH with it")
    extra = {"labeler": labeler, "gold": gold} if labeler not in (None, "llm") else {}
    _run_flow("flows.label", "label_flow", run_dir=run_dir, **cfg, max_batches=max_batches, runner=runner, workers=workers, ray_address=ray_address, **extra)


@app.command()
def revise(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    constitution: Optional[str] = opt(ReviseConfig, "constitution", "--constitution"),
    rounds: Optional[int] = opt(ReviseConfig, "rounds", "--rounds"),
    few_shot: Optional[bool] = opt(ReviseConfig, "few_shot", "--few-shot/--no-few-shot"),
    filter_regex: Optional[str] = opt(ReviseConfig, "filter_regex", "--filter-regex"),
    limit: Optional[int] = opt(ReviseConfig, "limit", "--limit"),
    sampling__max_new_tokens: Optional[int] = opt(ReviseConfig, "sampling.max_new_tokens", "--max-new-tokens"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    max_batches: Optional[int] = MaxBatches,
    set_: Optional[list[str]] = Sets,
) -> None:
    """Critique and revise this run's responses under a constitution."""
    flags = _flags(ReviseConfig, locals())
    with _user_errors():
        cfg = _config("revise", config, set_, flags)
    _run_flow("flows.revise", "revise_flow", run_dir=run_dir, **cfg, max_batches=max_batches)


server_app = typer.Typer(help="The local Prefect server every command shares (started on first use; see aifeedback/prefect_server.py).", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start() -> None:
    """Start the shared Prefect server in the background (or report the running one)."""
    from aifeedback import prefect_server

    with _user_errors():
        running = prefect_server.status()
        st = running or prefect_server.start()
    console.print(f"{'running' if running else 'started'}: pid {st['pid']}, API {st['api_url']}, UI {st['ui_url']}, log {st['log']}")
    host = _warm_host(wait=120.0, replace=True)
    if host:
        console.print(f"warm command host: pid {host['pid']} (torch and transformers imported once; log {host['log']})")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the shared Prefect server (the next stage command starts it again)."""
    from aifeedback import prefect_server

    from flows import warm

    host = warm.stop()
    st = prefect_server.stop()
    console.print(f"stopped: pid {st['pid']} ({st['api_url']})" if st else "no shared Prefect server is running")
    if host:
        console.print(f"stopped the warm command host: pid {host['pid']}")


@server_app.command("status")
def server_status(as_json: bool = typer.Option(False, "--json", help="Print the state as JSON.")) -> None:
    """Show the shared Prefect server; exits 1 when none is running."""
    from aifeedback import prefect_server

    st = prefect_server.status()
    configured = None
    with contextlib.suppress(Exception):
        configured = prefect_server.configured_api_url()
    from flows import warm

    host = warm.status()
    if as_json:
        print(json.dumps({"running": st is not None, **(st or {}), "configured_api_url": configured, "warm_host": host}, indent=1))
    elif st:
        console.print(f"running: pid {st['pid']}, API {st['api_url']}, UI {st['ui_url']}, since {st['started']}, log {st['log']}")
        if host:
            match = host["key"] == warm.fingerprint()
            console.print(f"warm command host: pid {host['pid']}, since {host['started']}" + ("" if match else " (started from another environment: this shell's commands run cold)"))
    else:
        console.print("no shared Prefect server is running; the next stage command starts one (or `aifeedback server start`)")
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

    with _user_errors():
        con, _ = load_constitution(file)
    console.print(f"[green]ok[/] {con.id} v{con.version}: {len(con.critique_revision)} critique/revision pairs, {len(con.choice)} choice principles, {len(con.exemplars)} exemplars; sha256 {con.sha256[:16]}")


@constitution_app.command("show")
def constitution_show(file: str = typer.Argument(..., help="Constitution YAML path or shipped id.")) -> None:
    """Print a constitution's principles."""
    from aifeedback.constitution import load_constitution

    with _user_errors():
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

    with _user_errors():
        items = load_human(fmt, src, limit, seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"pair_id": it["pair_id"], "prompt": it["messages"], "response_a": it["response_a"], "response_b": it["response_b"], "human": it["human"], "source": it.get("source")}, ensure_ascii=False) + "\n")
    console.print(f"wrote {len(items)} pairs to {out}")


@app.command("import-labels")
def import_labels(
    verdicts: str = typer.Argument(..., help="The judge's verdict file: PandaLM-style (idx + NAME_result) or any table with an id and a verdict or probability column."),
    judge: str = typer.Option(..., "--judge", help="The judge's name, recorded as labeler_model on every row (e.g. gpt-3.5-turbo)."),
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
    flags = _flags(LabelConfig, locals())
    with _user_errors():
        cfg = _config("label", config, set_, flags)
    _run_flow("flows.import_labels", "import_labels_flow", run_dir=run_dir, verdicts=verdicts, judge=judge, **cfg, id_column=id_column, label_column=label_column, prob_column=prob_column, id_prefix=id_prefix)


@app.command("train-rm")
def train_rm(
    run_dir: str = RunDir,
    out: str = typer.Option(..., "--out", help="Folder for the model, its card and its config."),
    config: Optional[Path] = ConfigPath,
    labels: Optional[str] = opt(RewardConfig, "labels", "--labels"),
    backbone: Optional[str] = opt(RewardConfig, "backbone", "--backbone"),
    human: Optional[str] = typer.Option(None, help="Human labels for held-out evaluation (joined by pair id)."),
    human_format: str = typer.Option("hh", help="hh, pandalm, llmbar or generic."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Distilled RLAIF: train a reward model on this run's AI soft labels."""
    flags = _flags(RewardConfig, locals())
    with _user_errors():
        cfg = _config("train-rm", config, set_, flags)
    _run_flow("flows.train", "train_rm_flow", run_dir=run_dir, out_dir=out, **cfg, human=human, human_format=human_format)


@app.command("train-rl")
def train_rl(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy and its reward curve."),
    config: Optional[Path] = ConfigPath,
    reward: Optional[str] = opt(RLConfig, "reward", "--reward"),
    reward_model: Optional[str] = opt(RLConfig, "reward_model", "--reward-model"),
    policy: Optional[str] = opt(RLConfig, "policy", "--policy"),
    prompts: Optional[str] = typer.Option(None, help="Prompt file; default data/prompts."),
    limit: int = typer.Option(8, help="Prompts used."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """RL on AI feedback (GRPO with a KL penalty to the reference policy)."""
    flags = _flags(RLConfig, locals())
    with _user_errors():
        cfg = _config("train-rl", config, set_, flags)
    _run_flow("flows.train", "train_rl_flow", out_dir=out, prompts_file=prompts, **cfg, limit=limit)


@app.command("train-dpo")
def train_dpo(
    out: str = typer.Option(..., "--out", help="Folder for the trained policy."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="A labelled run: its AI labels become DPO pairs."),
    preferences: Optional[str] = typer.Option(None, help="Or a Parquet file in TRL columns (prompt, chosen, rejected)."),
    config: Optional[Path] = ConfigPath,
    policy: Optional[str] = opt(DPOTrainConfig, "policy", "--policy"),
    set_: Optional[list[str]] = Sets,
) -> None:
    """DPO on AI-labelled pairs through TRL (confidence filter; soft labels as label smoothing)."""
    flags = _flags(DPOTrainConfig, locals())
    with _user_errors():
        cfg = _config("train-dpo", config, set_, flags)
    _run_flow("flows.train", "train_dpo_flow", out_dir=out, run_dir=run_dir, preferences=preferences, **cfg)


@app.command()
def loop(
    run_dir: str = typer.Option("runs/loop", "--run-dir", help="Run directory of the loop (a re-run resumes it at the unfinished stage)."),
    config: Optional[Path] = ConfigPath,
    policy: Optional[str] = opt(LoopConfig, "policy", "--policy"),
    prompts: Optional[str] = opt(LoopConfig, "prompts", "--prompts"),
    iterations: Optional[int] = opt(LoopConfig, "iterations", "--iterations", "-k"),
    labeler: Optional[str] = opt(LoopConfig, "labeler", "--labeler"),
    gold: Optional[str] = opt(LoopConfig, "gold", "--gold"),
    evaluator: Optional[str] = opt(LoopConfig, "evaluator", "--evaluator"),
    method: Optional[str] = opt(LoopConfig, "method", "--method"),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="NAME=RUN_DIR: another loop run shown side by side in the report (repeatable), e.g. the LLM-labelled control."),
    set_: Optional[list[str]] = Sets,
) -> None:
    """Iterative online RLAIF: sample, label (LLM judge or reward model), DPO/GRPO, evaluate against the initial policy; K times."""
    flags = _flags(LoopConfig, locals())
    with _user_errors():
        cfg = _config("loop", config, set_, flags)
        pairs = dict(c.split("=", 1) for c in compare or [] if "=" in c)
        if len(pairs) != len(compare or []):
            raise ConfigError("--compare takes NAME=RUN_DIR, e.g. --compare control=runs/loop-llm")
    _run_flow("flows.loop", "loop_flow", run_dir=run_dir, **cfg, compare=pairs or None)


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

    with _user_errors():
        out = export_run(run_dir, to_dir, repo_id, private, report, test_size=test_size, seed=seed, min_confidence=min_confidence, consistent_only=consistent_only, drop_suspected_injection=drop_suspected_injection, license=license)
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
    from flows.schedule import flow_parameters, serve_flow

    from aifeedback.prefect_server import command_api

    with _user_errors(), command_api():  # the configured API, else the shared local server, which can fire schedules
        params = flow_parameters(flow, run_dir, str(config) if config else None, parse_overrides(set_))
        serve_flow(flow, cron=cron, interval=interval, deployment=name, parameters=params, limit=limit)


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
    from flows.schedule import recent_runs

    try:
        with _user_errors(), command_api():  # where the commands recorded their runs
            rows = recent_runs(limit=limit, flow=flow, deployment=deployment, upcoming=upcoming)
    except Exception as exc:  # httpx errors: the server is down or the URL is wrong
        if "connect" not in type(exc).__name__.lower() and "connect" not in str(exc).lower():
            raise
        _fail(RuntimeError(f"cannot reach the Prefect API ({exc}); check PREFECT_API_URL, or unset it to use the shared local server (`aifeedback server start`)"))
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
        _fail(ConfigError(f"{run_dir} holds no history.jsonl; pass --run-dir with a run directory a stage has written"))
    rows, tot = invocation_rows(run_dir), totals(run_dir)
    if as_json:
        print(json.dumps({"invocations": rows, "totals": tot}, indent=1, default=str))
        return
    cols = ("time", "stage", "n_in", "n_out", "batches_computed", "requests", "prompt_tokens", "completion_tokens", "cost_usd", "concurrency")
    table = Table(*cols, title=f"{run_dir}: stage runs")
    for r in rows:
        table.add_row(*("-" if r.get(c) is None else str(r.get(c)) for c in cols))
    console.print(table)
    for stage, t in tot.items():
        cost = "not priced (set backend.prices)" if t["cost_usd"] is None else f"${t['cost_usd']:.6f}"
        console.print(f"{stage}: {t['batches']} batches, {t['requests']} requests, {t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens{'' if t['exact'] else ' (some counts missing)'}, {cost}")


estimate_app = typer.Typer(help="What a stage would send, cost and take, before spending: no model call. Same arguments as the stage.", no_args_is_help=True)
app.add_typer(estimate_app, name="estimate")
Tokenizer = typer.Option(None, "--tokenizer", help="Count with this model's tokenizer and chat template (a local folder or embedded name): exact when it is the served model's. Default: the transformers backend's own; for endpoints, about 4 characters a token.")


def _estimate(stage: str, run_dir: str, config: Optional[Path], sets: Optional[list[str]], flags: dict, tokenizer: Optional[str], as_json: bool) -> None:
    with _user_errors():
        cfg = _config(stage, config, sets, flags)
        from flows.estimate import estimate

        result = estimate(stage, run_dir, cfg["config_path"], cfg["overrides"], tokenizer)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        _summary(result)


@estimate_app.command("label")
def estimate_label(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = opt(LabelConfig, "input", "--input", "-i"),
    method: Optional[str] = opt(LabelConfig, "method", "--method"),
    orders: Optional[str] = opt(LabelConfig, "orders", "--orders"),
    limit: Optional[int] = opt(LabelConfig, "limit", "--limit"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    set_: Optional[list[str]] = Sets,
    tokenizer: Optional[str] = Tokenizer,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate `aifeedback label`: tokens, cost and time; pairs already labelled in the run cost nothing."""
    _estimate("label", run_dir, config, set_, _flags(LabelConfig, locals()), tokenizer, as_json)


@estimate_app.command("generate")
def estimate_generate(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    input: Optional[str] = opt(GenerateConfig, "input", "--input", "-i"),
    sampling__n: Optional[int] = opt(GenerateConfig, "sampling.n", "--n"),
    limit: Optional[int] = opt(GenerateConfig, "limit", "--limit"),
    sampling__max_new_tokens: Optional[int] = opt(GenerateConfig, "sampling.max_new_tokens", "--max-new-tokens"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    set_: Optional[list[str]] = Sets,
    tokenizer: Optional[str] = Tokenizer,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate `aifeedback generate` (completion tokens: max_new_tokens each, an upper bound)."""
    _estimate("generate", run_dir, config, set_, _flags(GenerateConfig, locals()), tokenizer, as_json)


@estimate_app.command("revise")
def estimate_revise(
    run_dir: str = RunDir,
    config: Optional[Path] = ConfigPath,
    constitution: Optional[str] = opt(ReviseConfig, "constitution", "--constitution"),
    rounds: Optional[int] = opt(ReviseConfig, "rounds", "--rounds"),
    limit: Optional[int] = opt(ReviseConfig, "limit", "--limit"),
    sampling__max_new_tokens: Optional[int] = opt(ReviseConfig, "sampling.max_new_tokens", "--max-new-tokens"),
    backend__kind: Optional[str] = BackendKind,
    backend__model: Optional[str] = Model,
    backend__base_url: Optional[str] = BaseUrl,
    set_: Optional[list[str]] = Sets,
    tokenizer: Optional[str] = Tokenizer,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Estimate `aifeedback revise` (later rounds' prompts are counted without the text earlier rounds generate)."""
    _estimate("revise", run_dir, config, set_, _flags(ReviseConfig, locals()), tokenizer, as_json)


def config_classes() -> dict[str, type]:
    """Every config model by class name: the stage configs, their sections, each backend kind's, the trainers'."""
    import aifeedback.config as C

    models = [getattr(C, n) for n in C.__all__]
    out = {m.__name__: m for m in models if isinstance(m, type) and issubclass(m, C.StrictModel) and m is not C.StrictModel}
    return out | {c.__name__: c for c in (RewardConfig, RLConfig, DPOTrainConfig)}


@app.command("config")
def show_config(name: str = typer.Argument(..., help="Config class, e.g. LabelConfig, BackendConfig (every backend kind) or OpenAIBackendConfig.")) -> None:
    """Print a config's keys, defaults and descriptions (JSON schema)."""
    from pydantic import TypeAdapter

    from aifeedback.config import AnyBackendConfig

    classes = config_classes()
    if name not in classes:
        _fail(ConfigError(f"unknown config {name!r}; one of {', '.join(sorted(classes))}"))
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

    with _user_errors():
        path, data = write_viewer(run_dir, out, report)
    human = f", {data['n_human']} with a human label" if data["human_source"] else ""
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {len(data['pairs'])} labelled pairs, {len(data['excluded'])} excluded, {len(data['chains'])} revision chains{human}")
    console.print(f"open {path.as_uri()}", soft_wrap=True)


@app.command()
def demo(
    run_dir: str = typer.Option("runs/demo", "--run-dir", help="Where the demo run goes."),
    prompts: int = typer.Option(4, help="How many prompts from data/prompts."),
) -> None:
    """The demo on the embedded models: generate, revise, label; agreement on a human gold slice; export; a viewer page."""
    from aifeedback.prefect_server import command_api

    with _user_errors():
        from flows.demo import demo_flow, show

        t0 = time.perf_counter()
        with command_api():  # recorded where `aifeedback runs` looks, like every stage command
            out = demo_flow(run_dir=run_dir, n_prompts=prompts)
        console.print(f"\n[bold green]demo pipeline finished in {time.perf_counter() - t0:.0f} s[/]. Outputs:")
        for k, v in out.items():
            console.print(f"  {k}: {v}", soft_wrap=True)
        console.print()
        show(out, console)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
