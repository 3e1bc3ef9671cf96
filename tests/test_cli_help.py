"""The CLI documents each parameter once (its config Field), and every flag or command a message names exists."""

from __future__ import annotations

import ast
import re

import pytest
from typer.main import get_command

from aifeedback.config import OpenAIBackendConfig, SamplingConfig, field_of
from aifeedback.export import ExportOptions
from flows.cli import COMMAND_CONFIGS, app

from conftest import REPO

# options that are not config keys: where a command runs, reads or writes, not what it computes
NOT_CONFIG = {"run_dir", "config", "set_", "max_batches", "runner", "workers", "ray_address", "out", "human", "human_format", "prompts", "limit", "preferences", "to_dir", "repo_id", "private", "report", "labeler", "gold", "compare", "estimate", "tokenizer", "as_json"}


def _commands() -> dict:
    """Every command by its full name ("label", "constitution validate"), plus "" for the top level (Typer's own click objects)."""
    out: dict = {}

    def walk(cmd, prefix: str) -> None:
        out[prefix] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{prefix} {name}".strip())

    walk(get_command(app), "")
    return out


def _options(cmd) -> set[str]:
    return {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)} | {"--help"}


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_config_options_take_their_help_from_the_config(command):
    cls = COMMAND_CONFIGS[command]
    cmd = _commands()[command]
    mapped = 0
    for p in cmd.params:
        field = field_of(cls, p.name.replace("__", "."))
        if field is None:
            assert p.name in NOT_CONFIG, f"{command} {p.opts}: name the parameter by its {cls.__name__} key (sampling__n for sampling.n) and use opt()"
            continue
        assert p.help == field.description, f"{command} {p.opts}: help {p.help!r} is not the description of {cls.__name__}.{p.name}"
        mapped += 1
    assert mapped >= 1 and any(p.name == "config" for p in cmd.params) and any(p.name == "set_" for p in cmd.params)


@pytest.mark.parametrize("stage", ["generate", "revise", "label"])
def test_estimate_accepts_every_option_of_its_stage(stage):
    """The stage command and `estimate STAGE` are built from one table (flows/cli/options.py): none is lost."""
    cmds = _commands()
    run, est = _options(cmds[stage]), _options(cmds[f"estimate {stage}"])
    assert {"--cot", "--few-shot", "--constitution", "--principles", "--calibrate", "--backend"} <= run or stage != "label"
    assert run - {"--estimate"} <= est, f"estimate {stage} lacks {sorted(run - {'--estimate'} - est)}"
    assert {"--estimate", "--tokenizer", "--json"} <= run


def test_shared_options_read_the_right_sections():
    generate = {p.opts[0]: p.help for p in _commands()["generate"].params}
    assert generate["--n"] == SamplingConfig.model_fields["n"].description
    assert generate["--base-url"] == OpenAIBackendConfig.model_fields["base_url"].description
    export = {p.name: p.help for p in _commands()["export"].params}
    for name, f in ExportOptions.model_fields.items():
        assert export[name] == f.description


# -- every --flag and `aifeedback COMMAND` in a message or help text exists ----------------------------------

OTHER_PROGRAMS = {"prefect", "pip", "hf", "git", "python"}
NOT_COMMANDS = {
    "run": "aifeedback/export.py: an exported data set's pretty name, 'aifeedback run NAME'",
    "keeps": "aifeedback/paths.py: prose, 'Where aifeedback keeps its caches'",
}


def _messages():
    """(file:line, text) of every string literal with words in it; placeholders of f-strings read as {}."""
    for pkg in ("aifeedback", "labelers", "trainers", "flows"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            fragments = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
            for node in ast.walk(tree):
                if id(node) in fragments:  # read with its whole f-string
                    continue
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                else:
                    continue
                if " " in text.strip():  # a message; single tokens are argv items or option declarations
                    yield f"{path.relative_to(REPO)}:{node.lineno}", text


def _mentions(text: str):
    """(command or None, flag) for each --flag: the aifeedback command it follows in its clause, None when it follows none.
    Flags that follow another program (`prefect server start --host`, `pip install --no-deps`) are left out."""
    for span in re.split(r"`+", text):
        for clause in re.split(r"[;:()]|\. ", span):
            words, program = clause.split(), None
            for i, w in enumerate(words):
                if w == "aifeedback" and i + 1 < len(words):
                    program = words[i + 1]
                elif w in OTHER_PROGRAMS:
                    program = "-other-"
                elif w.startswith("--") and program != "-other-":
                    m = re.match(r"--[a-z][a-z0-9-]*", w)
                    if m:
                        yield program, m.group(0)


def test_every_flag_and_command_named_in_messages_exists():
    commands = _commands()
    every_option = set().union(*(_options(c) for c in commands.values()))
    problems, seen = [], 0
    for where, text in _messages():
        for m in re.finditer(r"\baifeedback ([a-z][\w-]*)(?: ([a-z][\w-]*))?", text):
            name, sub = m.groups()
            seen += 1
            if name in NOT_COMMANDS:
                continue
            if name not in commands:
                problems.append(f"{where}: `aifeedback {name}` is not a command")
            elif hasattr(commands[name], "commands") and f"{name} {sub}" not in commands:
                problems.append(f"{where}: `aifeedback {name} {sub}` is not a command")
        for command, flag in _mentions(text):
            seen += 1
            if command in NOT_COMMANDS or command not in commands:
                options = every_option
                where_ = "any command"
            else:
                options, where_ = _options(commands[command]) | _options(commands[""]), f"`aifeedback {command}`"
            if flag not in options:
                problems.append(f"{where}: {flag} is not an option of {where_}: {text[:160]!r}")
    assert seen > 50  # the scan found the messages
    assert not problems, "\n".join(problems)


def test_stage_commands_named_by_the_store_exist():
    from aifeedback.store import STAGE_COMMANDS
    from flows.export import CONFIG_FILE

    commands = _commands()
    for stage, command in {**STAGE_COMMANDS, **CONFIG_FILE}.items():
        assert command in commands, f"stage {stage} names `aifeedback {command}`, which is not a command"


def test_the_scan_finds_a_wrong_flag_and_a_wrong_command():
    """The checks above would catch the messages this issue was filed for."""
    assert list(_mentions("no id column. Pass --judge-id-column / --judge-label-column.")) == [(None, "--judge-id-column"), (None, "--judge-label-column")]
    assert list(_mentions("run `aifeedback labels --run-dir R` first; start `prefect server start --host 0`")) == [("labels", "--run-dir")]
    commands = _commands()
    assert "labels" not in commands and "--judge-id-column" not in set().union(*(_options(c) for c in commands.values()))
