"""The warm command host (flows/warm.py): commands forked from it give what a cold process gives, and leave nothing behind.

Real processes throughout: `aifeedback server start` (a real Prefect server and the
host), `aifeedback` commands in subprocesses with the embedded labeler, labels read
back from the run store.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
AIF = [str(Path(sys.executable).parent / "aifeedback")]


def _env(home: Path, **extra: str) -> dict:
    # PYTEST_CURRENT_TEST changes between a fixture and its test: a shell's commands share one environment
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AIFEEDBACK_PREFECT_SERVER", "AIFEEDBACK_WARM", "PYTEST_CURRENT_TEST")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", **extra)
    return env


def _aif(home: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(AIF + list(args), cwd=REPO, env=_env(home, **extra), capture_output=True, text=True, timeout=timeout)


def _pairs(path: Path, n: int) -> Path:
    rows = [{"pair_id": f"p{i}", "prompt": f"What is {i} plus {i}?", "response_a": f"It is {2 * i}.", "response_b": f"It is {2 * i + 1}, I think."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _forks(home: Path) -> list[int]:
    """Children the host forked so far, from its log."""
    log = home / "aifeedback-warm.log"
    return [int(line.split(" forked ")[1].split()[0]) for line in log.read_text().splitlines() if " forked " in line] if log.is_file() else []


def _labels(run_dir: Path) -> list[tuple]:
    from aifeedback.store import RunStore

    t = RunStore(run_dir).read_table("labels").to_pylist()
    return sorted((r["pair_id"], r["p_ab"], r["p_ba"], r["p_a"], r["hard_label"], r["item_key"]) for r in t)


def _running(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("warm") / "prefect-home"
    started = _aif(home, "server", "start", timeout=400)
    assert started.returncode == 0 and "warm command host: pid" in started.stdout, started.stdout + started.stderr[-3000:]
    yield home
    st = json.loads((home / "aifeedback-warm.json").read_text()) if (home / "aifeedback-warm.json").is_file() else None
    stopped = _aif(home, "server", "stop", timeout=60)
    assert stopped.returncode == 0 and "stopped the warm command host" in stopped.stdout, stopped.stdout
    if st:
        time.sleep(1)
        assert not _running(st["pid"]) and not Path(st["socket"]).exists()


def test_warm_command_gives_the_cold_commands_labels_output_and_exit_status(home, tmp_path):
    pairs = _pairs(tmp_path / "pairs.jsonl", 6)
    forks = len(_forks(home))
    warm = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "warm"))
    assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr[-3000:]
    assert len(_forks(home)) == forks + 1  # it ran in a child of the host
    cold = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "cold"), AIFEEDBACK_WARM="0")
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert len(_forks(home)) == forks + 1  # turned off: not delegated
    assert _labels(tmp_path / "warm") == _labels(tmp_path / "cold")
    assert len(_labels(tmp_path / "warm")) == 6
    for out in (warm, cold):  # the command's own terminal got its summary table and Prefect's log lines
        assert "n_out" in out.stdout and "Finished in state Completed" in out.stderr

    # a user error: same exit status and message on the command's stderr
    missing = str(tmp_path / "missing.jsonl")
    bad_warm = _aif(home, "label", "--input", missing, "--run-dir", str(tmp_path / "bad1"))
    bad_cold = _aif(home, "label", "--input", missing, "--run-dir", str(tmp_path / "bad2"), AIFEEDBACK_WARM="0")
    assert len(_forks(home)) == forks + 2
    assert bad_warm.returncode == bad_cold.returncode != 0
    assert "missing.jsonl" in bad_warm.stderr + bad_warm.stdout
    def message(out):  # without Prefect's timestamped log lines (run names, times differ)
        return [line.replace("bad1", "bad2") for line in (out.stderr + out.stdout).splitlines() if not re.match(r"\d\d:\d\d:\d\d", line)]

    assert message(bad_warm) == message(bad_cold) != []


def test_another_environment_runs_cold(home, tmp_path):
    """Variables read at import (here HF_HOME) are part of the host's fingerprint: a command that differs runs in its own process."""
    pairs = _pairs(tmp_path / "pairs.jsonl", 2)
    forks = len(_forks(home))
    out = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run"), HF_HOME=str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(_forks(home)) == forks
    status = _aif(home, "server", "status", HF_HOME=str(tmp_path / "hf"))
    assert "this shell's commands run cold" in status.stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_command_leaves_no_process(home, tmp_path, sig):
    pairs = _pairs(tmp_path / "pairs.jsonl", 400)
    forks = len(_forks(home))
    run = tmp_path / "run"
    # SIGINT as at a terminal: a suite started in the background (`make test &`, nohup) passes SIGINT down
    # ignored, and then the command rightly ignores it, warm or cold (the next test covers ignored signals)
    proc = subprocess.Popen(AIF + ["label", "--input", str(pairs), "--run-dir", str(run)], cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_default_sigint)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "configs" / "label.json").is_file():  # written inside the flow run
        assert proc.poll() is None, "the command ended before its flow started"
        time.sleep(0.2)
    assert (run / "configs" / "label.json").is_file(), "the flow did not start within 300 s"
    children = _forks(home)[forks:]
    assert len(children) == 1 and _running(children[0])
    host = psutil.Process(json.loads((home / "aifeedback-warm.json").read_text())["pid"])
    assert [c.pid for c in host.children()] == children  # the command's child is the only one
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and psutil.pid_exists(children[0]):  # not even a zombie: the host's children are reaped
        time.sleep(0.2)
    assert not psutil.pid_exists(children[0]), f"the command's warm child {children[0]} is still there after {sig.name}"
    assert host.children() == [] and host.is_running()
    if sig == signal.SIGINT:  # passed on: the child stopped the way a cold command stops on Ctrl-C
        assert proc.returncode != 0


def test_a_signal_the_command_ignores_stays_ignored(home, tmp_path):
    """nohup and `cmd &` in scripts start the command with SIGHUP or SIGINT ignored; its warm child ignores them too."""
    pairs = _pairs(tmp_path / "pairs.jsonl", 40)
    forks = len(_forks(home))
    run = tmp_path / "run"

    def ignore_hup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(AIF + ["label", "--input", str(pairs), "--run-dir", str(run)], cwd=REPO, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_hup)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "configs" / "label.json").is_file() and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGHUP)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(_forks(home)) == forks + 1
    assert len(_labels(run)) == 40
