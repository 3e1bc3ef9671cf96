"""The shared local Prefect server: reused by commands, safe on a shared machine, no process left by kill -9.

Real processes throughout: `aifeedback` commands in subprocesses with the embedded
labeler, a real `prefect server start`, its REST API queried for the recorded runs,
a real unrelated process (`sleep`) named by a stale state file, a real HTTP squatter.
Processes are counted by their PREFECT_HOME, so other Prefect servers on the machine
do not count.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from aifeedback import prefect_server


pytestmark = pytest.mark.slow  # starts Prefect servers

REPO = Path(__file__).resolve().parents[1]
AIF = [str(Path(sys.executable).parent / "aifeedback")]


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "AIFEEDBACK_PREFECT_SERVER")}
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


def _auth(home: Path) -> tuple[str, str]:
    user, _, password = (home / "aifeedback-server.auth").read_text().strip().partition(":")
    return user, password


def _flow_runs(api_url: str, home: Path) -> list[dict]:
    r = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 50}, auth=_auth(home), timeout=10)
    r.raise_for_status()
    return r.json()


def _state(home: Path) -> dict:
    return json.loads((home / "aifeedback-server.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private PREFECT_HOME for this process's `prefect_server` calls, its shared server stopped and its processes gone at the end."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv(prefect_server.MODE_ENV, "shared")
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        monkeypatch.delenv(key, raising=False)
    yield home
    prefect_server.stop()
    for pid in _server_processes(home):  # only if a test failed half-way: this test's servers, by their PREFECT_HOME
        os.killpg(pid, signal.SIGKILL)
    assert _server_processes(home) == []


def test_commands_use_the_started_server_and_kill_9_leaves_no_process(tmp_path):
    home = tmp_path / "prefect-home"
    pairs = _pairs(tmp_path)
    assert _aif(home, "server", "status").returncode == 1  # none yet
    try:
        started = _aif(home, "server", "start", timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-3000:]
        st = _state(home)
        first = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run1"))
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
        assert _server_processes(home) == [st["pid"]]  # one server: the shared one, no temporary server
        assert [r["state_type"] for r in _flow_runs(st["api_url"], home)] == ["COMPLETED"]  # the flow run is recorded on the shared server

        second = _aif(home, "label", "--input", str(pairs), "--run-dir", str(tmp_path / "run2"))
        assert second.returncode == 0, second.stderr[-3000:]
        assert _state(home) == st  # reused, not restarted
        assert _server_processes(home) == [st["pid"]]
        assert sorted(r["state_type"] for r in _flow_runs(st["api_url"], home)) == ["COMPLETED", "COMPLETED"]
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
        leftovers = [pid for pid in children if _alive(pid)]
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


def test_a_stale_state_file_naming_an_unrelated_process_is_discarded(tmp_path, home):
    """After a reboot or a container restart the recorded pid names someone else's process: never waited on, never signalled."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "aifeedback-server.json").write_text(json.dumps({"pid": dead.pid, "port": 1, "api_url": "http://127.0.0.1:1/api"}))
    assert prefect_server.running() is None and prefect_server.status() is None

    # a live unrelated process, leader of its own process group as the server is: the right command line, the wrong start time
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        port = _free_port()
        record = {"pid": other.pid, "port": port, "api_url": f"http://127.0.0.1:{port}/api", "cmdline": ["sleep", "300"], "start_time": "another-boot:1"}
        (home / "aifeedback-server.json").write_text(json.dumps(record))
        assert prefect_server.running() is None
        assert prefect_server.stop() is None  # nothing signalled, the stale record removed
        time.sleep(0.5)
        assert _alive(other.pid)
        assert not (home / "aifeedback-server.json").exists()

        # the record an older version wrote (pid and port only), the case a review verified: start waited 180 s, stop sent SIGTERM
        (home / "aifeedback-server.json").write_text(json.dumps({"pid": other.pid, "port": port, "api_url": f"http://127.0.0.1:{port}/api", "log": "x", "ui_url": "x", "started": "x"}))
        t0 = time.monotonic()
        started = _aif(home, "server", "start", timeout=300)  # past start's own 180 s, so a failure prints its reason
        took = time.monotonic() - t0
        assert started.returncode == 0 and "started" in started.stdout, started.stdout[-2000:] + started.stderr[-3000:]
        assert took < 120, f"server start took {took:.0f} s"
        st = _state(home)
        assert st["pid"] != other.pid and _server_processes(home) == [st["pid"]]
        stopped = _aif(home, "server", "stop", timeout=60)
        assert stopped.returncode == 0 and f"stopped: pid {st['pid']}" in stopped.stdout
        assert _server_processes(home) == []
        assert _alive(other.pid), "server stop signalled an unrelated process"
    finally:
        other.kill()
        other.wait()


def test_auth_string_is_private_required_and_given_to_flows(home):
    """A random auth string, 0600, in no state file, log or command line; the API refuses requests without it; CORS allows only the UI."""
    from prefect import flow

    t0 = time.monotonic()
    st = prefect_server.start()
    took = time.monotonic() - t0
    auth_file = home / "aifeedback-server.auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    secret = auth_file.read_text().strip()
    assert len(secret) > 32
    assert secret.split(":")[1] not in (home / "aifeedback-server.json").read_text()
    assert secret.split(":")[1] not in Path(st["log"]).read_text()
    for p in psutil.Process(st["pid"]).children(recursive=True) + [psutil.Process(st["pid"])]:
        assert secret.split(":")[1] not in " ".join(p.cmdline())
    assert psutil.Process(st["pid"]).environ().get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"  # prefect_env.DEFAULTS, inherited: no telemetry heartbeat to prefect.io

    api = st["api_url"]
    assert httpx.get(f"{api}/admin/version", timeout=10).status_code == 401
    assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401
    wrong = base64.b64encode(b"aifeedback:guess").decode()
    assert httpx.get(f"{api}/admin/version", headers={"Authorization": f"Basic {wrong}"}, timeout=10).status_code == 401
    assert httpx.get(f"{api}/admin/version", auth=_auth(home), timeout=10).status_code == 200

    def preflight(origin: str) -> str | None:
        r = httpx.options(f"{api}/flow_runs/filter", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=10)
        return r.headers.get("access-control-allow-origin")

    assert preflight("http://evil.example") is None
    assert preflight(st["ui_url"]) == st["ui_url"]

    @flow
    def add_one(x: int) -> int:
        return x + 1

    with prefect_server.command_api() as url:  # a command that runs as a Prefect flow on the shared server
        assert url == api
        assert add_one(1) == 2
    assert "PREFECT_API_AUTH_STRING" not in os.environ  # restored
    assert [r["state_type"] for r in _flow_runs(api, home)] == ["COMPLETED"]  # recorded on the shared server
    assert prefect_server.stop()["pid"] == st["pid"]
    assert not auth_file.exists() and _server_processes(home) == []
    print(f"server start: {took:.1f} s")


SQUATTER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def _answer(self):
        auth = self.headers.get("Authorization")
        if auth:
            with open(sys.argv[2], "a") as fh:
                fh.write(auth + "\n")
        ok = self.path.endswith("/health") or auth
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"true" if ok else b'{"exception_message":"Unauthorized"}')
    do_GET = do_POST = _answer
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_squatter_on_the_port_is_not_accepted(tmp_path, home):
    """Another process on the port that answers like an authenticated Prefect server is not ours, and never receives the auth string."""
    port = _free_port()
    seen = tmp_path / "squatter-saw-auth.txt"
    squatter = subprocess.Popen([sys.executable, "-c", SQUATTER, str(port), str(seen)])
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not _listening(port):
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/api/admin/version", timeout=5).status_code == 401  # it looks like a server with auth

        with pytest.raises(prefect_server.ServerError, match=str(port)):
            prefect_server.start(port=port)  # asked for the squatted port
        assert prefect_server.running() is None and _server_processes(home) == []

        # our server is alive, but its record points at the squatter's port: not ours, whatever /api/health says
        st = prefect_server.start()
        (home / "aifeedback-server.json").write_text(json.dumps(dict(st, port=port, api_url=f"http://127.0.0.1:{port}/api")))
        assert prefect_server.running() is not None  # the process is ours ...
        assert prefect_server.status() is None  # ... but what answers on the port is not
        with pytest.raises(prefect_server.ServerError, match="does not answer"):
            prefect_server.start(timeout=3)
        assert not seen.exists(), "the squatter received an Authorization header"
        (home / "aifeedback-server.json").write_text(json.dumps(st))
        assert prefect_server.status() == st
    finally:
        squatter.kill()
        squatter.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_failed_state_write_kills_the_started_server(home):
    """The state is written right after the process starts; when that fails, the process is killed, not left unrecorded."""
    (home / "aifeedback-server.json.tmp").mkdir()  # the state write fails
    with pytest.raises(OSError):
        prefect_server.start()
    assert _server_processes(home) == []
    assert not (home / "aifeedback-server.auth").exists()


def test_a_server_that_does_not_answer_in_time_is_killed_and_the_reason_named(home, monkeypatch):
    """A server this process started and that does not answer within the timeout is killed and reaped, even when its recorded identity no longer matches (the wait never hangs)."""
    monkeypatch.setattr(prefect_server.procs, "matches", lambda pid, recorded: False)  # what a record that stopped matching looks like
    outcome: dict = {}

    def attempt():
        try:
            prefect_server.start(timeout=1)
        except prefect_server.ServerError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "start() hung after its server failed to come up"
    assert "did not answer within 1 s (last check: " in outcome["error"] and "aifeedback-server.log" in outcome["error"], outcome
    assert time.monotonic() - t0 < 60
    assert _server_processes(home) == []
    assert not (home / "aifeedback-server.json").exists() and not (home / "aifeedback-server.auth").exists()


def test_a_server_that_exits_is_reported_with_its_code_and_log(home, monkeypatch):
    """A server that exits while coming up (here: a setting Prefect rejects) is named as exited, with its exit code and its log's tail."""
    monkeypatch.setenv("PREFECT_SERVER_LOGGING_LEVEL", "NOT-A-LEVEL")
    with pytest.raises(prefect_server.ServerError, match=r"it exited with code [1-9]") as err:
        prefect_server.start(timeout=120)
    assert "NOT-A-LEVEL" in str(err.value)  # the log's tail says why
    assert _server_processes(home) == [] and not (home / "aifeedback-server.json").exists()


def test_stop_waits_for_the_start_lock(home):
    """`stop` takes the lock `start` holds while a server comes up, so it never acts on a half-written state."""
    done = threading.Event()
    with prefect_server.state_lock():
        thread = threading.Thread(target=lambda: (prefect_server.stop(), done.set()))
        thread.start()
        time.sleep(1.0)
        assert not done.is_set()
    thread.join(timeout=10)
    assert done.is_set()
