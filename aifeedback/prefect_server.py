"""One local Prefect server shared by every command: started on first use, reused while alive.

Without ``PREFECT_API_URL`` Prefect starts a temporary server in every process
(13-27 s here, before any work) and a kill -9 of the command leaves its uvicorn
child running. Instead, a command that finds no configured API uses this shared
server: it reads ``$PREFECT_HOME/aifeedback-server.json`` (pid, port), checks the
process and ``/api/health``, and starts ``prefect server start`` in its own
session when none answers. The server keeps the same SQLite database in
``$PREFECT_HOME`` the temporary servers used, so flow and task runs are recorded
where they were, and its UI shows them (``aifeedback server status`` prints the
address). It is a real server, so schedules fire against it too.

``aifeedback server start|stop|status`` manage it explicitly. A configured API
(``PREFECT_API_URL`` in the environment or the Prefect profile) always wins, and
``AIFEEDBACK_PREFECT_SERVER=temporary`` restores the per-process temporary server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import AIFeedbackError

MODE_ENV = "AIFEEDBACK_PREFECT_SERVER"  # "shared" (default) or "temporary"
STATE_FILE = "aifeedback-server.json"


class ServerError(AIFeedbackError):
    """The shared Prefect server did not come up or answer."""


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_path() -> Path:
    return prefect_home() / STATE_FILE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def read_json(path: Path) -> dict | None:
    """A state file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_state() -> dict | None:
    return read_json(state_path())


def status() -> dict | None:
    """The shared server when its process is alive and its API answers, else None."""
    st = _read_state()
    if not st or not alive(int(st.get("pid", -1))):
        return None
    if not _healthy(st["api_url"]):
        return None
    return st


@contextlib.contextmanager
def state_lock(name: str = STATE_FILE):
    """One starter (or stopper) at a time of what ``$PREFECT_HOME/name`` describes: two commands starting together share one."""
    import fcntl

    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / (name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start(timeout: float = 180.0) -> dict:
    """The running shared server, or a new one started in the background (detached: it outlives this command).

    Waits until its API answers. Raises ServerError naming the log when it does not come up.
    """
    with state_lock():
        st = _read_state()
        if st and alive(int(st.get("pid", -1))):
            # started by another command and still coming up, or running: wait for it rather than start a second
            if _wait_healthy(st, timeout):
                return st
            raise ServerError(f"the shared Prefect server (pid {st['pid']}) does not answer at {st['api_url']}; see {st['log']}, or run `aifeedback server stop` and retry")
        port = _free_port()
        home = prefect_home()
        log = home / "aifeedback-server.log"
        env = dict(os.environ, PREFECT_UI_ENABLED=os.environ.get("PREFECT_UI_ENABLED", "true"))
        env.pop("PREFECT_API_URL", None)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: `stop` ends the whole tree; the command's signals do not reach it
            )
        st = {"pid": proc.pid, "port": port, "api_url": f"http://127.0.0.1:{port}/api", "ui_url": f"http://127.0.0.1:{port}", "log": str(log), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prefect_home": str(home)}
        tmp = state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=1))
        os.replace(tmp, state_path())
        if _wait_healthy(st, timeout, proc):
            return st
        stop()
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
        raise ServerError(f"the shared Prefect server did not answer within {timeout:.0f} s (log {log}):\n{tail}")


def _wait_healthy(st: dict, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if proc is None and not alive(int(st["pid"])):
            return False
        if _healthy(st["api_url"]):
            return True
        time.sleep(0.25)
    return False


def stop(timeout: float = 15.0) -> dict | None:
    """Stop the shared server (its whole process group); returns what was stopped, or None."""
    st = _read_state()
    if not st:
        return None
    pid = int(st.get("pid", -1))
    if pid > 0 and alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    state_path().unlink(missing_ok=True)
    return st


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # members that are zombies do not count
    import psutil

    return any(p.info["status"] != psutil.STATUS_ZOMBIE for p in psutil.process_iter(["status"]) if _pgid(p.pid) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def configured_api_url() -> str | None:
    """The API the user configured (environment or Prefect profile), if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


@contextlib.contextmanager
def command_api():
    """Run a command's flow against the configured API, else the shared local server (started when needed).

    ``AIFEEDBACK_PREFECT_SERVER=temporary`` keeps Prefect's per-process temporary server.
    """
    mode = os.environ.get(MODE_ENV, "shared")
    if mode not in ("shared", "temporary"):
        from .errors import ConfigError

        raise ConfigError(f"{MODE_ENV}={mode!r}: use shared (one local Prefect server for every command) or temporary (one per process)")
    if mode == "temporary" or configured_api_url():
        yield None
        return
    st = status() or start()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = st["api_url"]  # child processes (Ray workers) report to it too
    try:
        with temporary_settings(updates={PREFECT_API_URL: st["api_url"]}):
            yield st["api_url"]
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
