"""The command line as a user runs it (subprocesses)."""

import subprocess
import sys
from pathlib import Path

AIF = [str(Path(sys.executable).parent / "aifeedback")]


def run(*args, timeout=300):
    import os

    env = dict(os.environ, COLUMNS="300")  # Rich wraps and truncates to the terminal width
    return subprocess.run(AIF + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("models", "generate", "revise", "label", "agreement", "demo", "constitution", "train-rm"):
        assert cmd in out.stdout


def test_models_shows_resolved_defaults():
    out = run("models")
    assert out.returncode == 0, out.stderr
    assert "embedded/smollm2-135m-instruct" in out.stdout and "ok" in out.stdout


def test_bad_input_is_a_clear_error_with_exit_2(tmp_path):
    out = run("label", "--run-dir", str(tmp_path / "r"), "--input", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2
    assert "does not exist" in out.stdout
    bad = tmp_path / "c.yaml"
    bad.write_text("method: pairwise\nordrs: both\n")
    out = run("label", "--run-dir", str(tmp_path / "r"), "--config", str(bad))
    assert out.returncode == 2 and "ordrs" in out.stdout


def test_constitution_commands():
    assert run("constitution", "validate", "harmless").returncode == 0
    out = run("constitution", "show", "helpful-honest")
    assert out.returncode == 0 and "hc-more-helpful" in out.stdout


def test_a_config_typo_in_a_trainer_is_one_line_with_exit_2(tmp_path):
    """Trainer commands build their config like the stages: a typo in --set is one error line, no traceback, and nothing runs."""
    out = run("train-rm", "--run-dir", str(tmp_path / "r"), "--out", str(tmp_path / "rm"), "--set", "epoks=2")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout.strip().splitlines() == [out.stdout.strip()] and out.stdout.startswith("error: invalid RewardConfig")
    assert "unknown key 'epoks'" in out.stdout and "'epochs'" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr and not list(tmp_path.iterdir())
