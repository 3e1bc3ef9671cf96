"""A local command needs no Prefect: it imports none, starts no server, and a kill -9 leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import REPO

CLI = [sys.executable, "-m", "flows.cli"]


def _pairs(path: Path, n: int) -> Path:
    rows = [{"pair_id": f"p{i}", "prompt": f"Name a colour number {i}.", "response_a": "Blue.", "response_b": f"I think it is green, or perhaps red {i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "AIFEEDBACK_PREFECT"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile, no shared server: nothing configured
    return env


def test_label_runs_in_process_without_importing_prefect(tmp_path):
    """The label command, run as the console script would, labels its pairs and never imports Prefect."""
    src = _pairs(tmp_path / "pairs.jsonl", 2)
    code = (
        "import sys\n"
        "from flows.cli import app\n"
        "try:\n"
        f"    app(['label', '--run-dir', {str(tmp_path / 'run')!r}, '--input', {str(src)!r}])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('PREFECT_IMPORTED', 'prefect' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PREFECT_IMPORTED False" in out.stdout, out.stdout[-2000:]
    assert "labels: 2 pairs in = 2 labelled + 0 excluded" in out.stdout
    assert not (tmp_path / "prefect-home").exists() or not any((tmp_path / "prefect-home").glob("*.json")), "no server state was written"


def test_kill_9_of_a_local_command_leaves_no_process(tmp_path):
    """Count this session's processes before, start a label command, kill -9 it mid-run: after, the same count."""
    src = _pairs(tmp_path / "pairs.jsonl", 40)
    me = psutil.Process()

    def ours() -> set[int]:  # every live descendant of this test process (zombies are reaped below)
        return {p.pid for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}

    before = ours()
    proc = subprocess.Popen([*CLI, "label", "--run-dir", str(tmp_path / "run"), "--input", str(src), "--set", "batch_size=2"], cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "run" / "labels").glob("*.parquet")):  # its first batch is written: mid-run
        time.sleep(0.5)
    assert proc.poll() is None, "the command finished before it could be killed"
    during = ours() - before
    assert proc.pid in during
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    time.sleep(1.0)
    assert ours() == before, f"left behind: {[psutil.Process(p).cmdline() for p in ours() - before]}"
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in during), "a child of the command survived it"
