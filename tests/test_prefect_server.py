"""The shared local Prefect server: started by the first command, reused by the next, no process left by kill -9.

Real processes throughout: `aifeedback` commands in subprocesses with the embedded
labeler, a real `prefect server start`, its REST API queried for the recorded runs.
Processes are counted by their PREFECT_HOME, so other Prefect servers on the
machine do not count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
AIF = [str(Path(sys.executable).parent / "aifeedback")]


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AIFEEDBACK_PREFECT_SERVER")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return env


def _server_processes(home: Path) -> list[int]:
    """Prefect server processes (shared or temporary) whose PREFECT_HOME is this test's."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["status"] == psutil.STATUS_ZOMBIE or not (("prefect" in cmd and "server" in cmd) or "uvicorn" in cmd):
            continue
        try:
            if p.environ().get("PREFECT_HOME") == str(home):
                out.append(p.info["pid"])
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return sorted(out)


def _aif(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(AIF + list(args), cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=timeout)


def _pairs(tmp: Path, n: int = 2) -> Path:
    path = tmp / "pairs.jsonl"
    rows = [{"pair_id": f"p{i}", "prompt": f"What is {i} plus {i}?", "response_a": f"It is {2 * i}.", "response_b": f"It is {2 * i + 1}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _flow_runs(api_url: str) -> list[dict]:
    r = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 50}, timeout=10)
    r.raise_for_status()
    return r.json()


def _state(home: Path) -> dict:
    return json.loads((home / "aifeedback-server.json").read_text())


def test_commands_share_one_server_and_kill_9_leaves_no_process(tmp_path):
    home = tmp_path / "prefect-home"
    pairs = _pairs(tmp_path)
    assert _aif(home, "server", "status").returncode == 1  # none yet
    try:
        first = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run1"))
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
        st = _state(home)
        assert _server_processes(home) == [st["pid"]]  # one server: the shared one, no temporary server
        runs = _flow_runs(st["api_url"])
        assert [r["state_type"] for r in runs] == ["COMPLETED"]  # the flow run is recorded on the shared server

        second = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run2"))
        assert second.returncode == 0, second.stderr[-3000:]
        assert _state(home) == st  # reused, not restarted
        assert _server_processes(home) == [st["pid"]]
        assert sorted(r["state_type"] for r in _flow_runs(st["api_url"])) == ["COMPLETED", "COMPLETED"]
        status = _aif(home, "server", "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == st["pid"]

        # kill -9 a command in the middle of its flow: the process count is what it was before
        before = _server_processes(home)
        run3 = tmp_path / "run3"
        proc = subprocess.Popen(AIF + ["label", "--input", str(pairs), "--run-dir", str(run3)], cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and not (run3 / "configs" / "label.json").is_file():  # written inside the flow run
            assert proc.poll() is None, "the command ended before its flow started"
            time.sleep(0.2)
        assert (run3 / "configs" / "label.json").is_file(), "the flow did not start within 300 s"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(2)
        assert _server_processes(home) == before
        leftovers = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert leftovers == [], f"processes of the killed command still running: {leftovers}"

        # the next command still finds the server
        fourth = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run4"))
        assert fourth.returncode == 0, fourth.stderr[-3000:]
        assert _state(home)["pid"] == st["pid"]
    finally:
        stopped = _aif(home, "server", "stop", timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _server_processes(home) == []
    assert _aif(home, "server", "status").returncode == 1


def test_explicit_start_is_reused_and_a_configured_api_wins(tmp_path):
    home = tmp_path / "prefect-home"
    try:
        started = _aif(home, "server", "start", timeout=300)
        assert started.returncode == 0 and "started" in started.stdout, started.stderr[-2000:]
        again = _aif(home, "server", "start")
        assert again.returncode == 0 and "running" in again.stdout
        st = _state(home)
        assert _server_processes(home) == [st["pid"]]
        # a command with PREFECT_API_URL set talks to that API: here the same server, named explicitly
        env = dict(_env(home), PREFECT_API_URL=st["api_url"])
        out = subprocess.run(AIF + ["server", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "PREFECT_API_URL is configured" in out.stdout
    finally:
        _aif(home, "server", "stop", timeout=60)
    assert _server_processes(home) == []


def test_stale_state_file_is_replaced(tmp_path):
    """A state file whose process is gone (the machine rebooted, the server was killed) is not trusted."""
    from aifeedback import prefect_server

    home = tmp_path / "prefect-home"
    home.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "aifeedback-server.json").write_text(json.dumps({"pid": dead.pid, "port": 1, "api_url": "http://127.0.0.1:1/api"}))
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        assert prefect_server.status() is None
    finally:
        os.environ["PREFECT_HOME"] = old if old is not None else ""
        if old is None:
            del os.environ["PREFECT_HOME"]
