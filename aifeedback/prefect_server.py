"""One local Prefect server that commands share: `aifeedback server start|stop|status`, reused while it runs.

The server is ``prefect server start`` on 127.0.0.1, in its own session, keeping the
SQLite database in ``$PREFECT_HOME``; its UI shows the flow runs and schedules fire
against it. Its state (pid, command line, start time, port) is in
``$PREFECT_HOME/aifeedback-server.json``, and it is safe on a machine shared with others:

- The recorded pid is trusted only while its command line and start time are the
  recorded ones (``procs.matches``). A stale file (a reboot, a container restart)
  naming a pid now used by another process is discarded: ``start`` starts a fresh
  server, ``stop`` signals nothing.
- Each server has a random auth string (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``)
  in ``$PREFECT_HOME/aifeedback-server.auth`` (mode 0600), never in the state file, a
  log or a command line: the server gets it in its environment, commands in
  ``command_api()``. CORS allows only the server's own UI origin.
- It is ours only when its process group holds the listening socket on the recorded
  port (checked before the auth string is sent), it refuses a request without the
  auth string and answers one with it. A squatter on the port is not accepted.
- ``start`` and ``stop`` take one lock; the state is written right after the process
  starts, and if that fails the process is killed, not orphaned.

A configured API (``PREFECT_API_URL`` in the environment or the Prefect profile) always
wins, and ``AIFEEDBACK_PREFECT_SERVER=temporary`` gives ``command_api()`` Prefect's
per-process temporary server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import procs
from .errors import AIFeedbackError

MODE_ENV = "AIFEEDBACK_PREFECT_SERVER"  # "shared" (default) or "temporary"
STATE_FILE = "aifeedback-server.json"
AUTH_FILE = "aifeedback-server.auth"
HOST = "127.0.0.1"


class ServerError(AIFeedbackError):
    """The shared Prefect server did not come up or answer."""


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_path() -> Path:
    return prefect_home() / STATE_FILE


def auth_path() -> Path:
    return prefect_home() / AUTH_FILE


def read_json(path: Path) -> dict | None:
    """A state file's content, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_state() -> dict | None:
    st = read_json(state_path())
    if st is None or not isinstance(st.get("pid"), int) or not isinstance(st.get("port"), int):
        return None
    return st


def running() -> dict | None:
    """The shared server's state while the process `start` launched is alive (same pid, command line, start time), else None.

    Cheap (no Prefect import, no HTTP: a few milliseconds), for deciding whether to use the
    server. It may still be coming up; ``start()`` and ``command_api()`` wait until it answers.
    """
    st = _read_state()
    return st if st and procs.matches(st["pid"], st) else None


def status() -> dict | None:
    """The shared server's state when it is running and answers as ours (see ``_ready``), else None."""
    st = running()
    auth = _read_auth()
    return st if st and auth and _ready(st, auth) else None


def _read_auth() -> str | None:
    try:
        return auth_path().read_text().strip() or None
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (0600 from creation, replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_state(st: dict) -> None:
    tmp = state_path().with_name(STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(st, indent=1))
    os.replace(tmp, state_path())


def _discard() -> None:
    state_path().unlink(missing_ok=True)
    auth_path().unlink(missing_ok=True)


def _ready(st: dict, auth: str, timeout: float = 2.0) -> bool:
    """The recorded server answers as ours (see ``_probe``)."""
    return not _probe(st, auth, timeout)


def _probe(st: dict, auth: str, timeout: float = 2.0) -> str:
    """Why the recorded server does not answer as ours, or "" when it does.

    Its process group holds the listening socket on the port (checked first, so the auth
    string never goes to another process), a request without the auth string is refused
    with 401, and the same request with it answers 200.
    """
    if not procs.group_listens(st["pid"], st["port"], HOST):
        return f"no process of its group listens on port {st['port']}"
    import httpx

    url = f"{st['api_url']}/admin/version"
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            anonymous = client.get(url).status_code
            if anonymous != 401:
                return f"GET {url} without the auth string answered {anonymous}, not 401"
            authed = client.get(url, auth=_basic(auth)).status_code
            return "" if authed == 200 else f"GET {url} with the auth string answered {authed}, not 200"
    except httpx.HTTPError as exc:
        return f"GET {url} failed: {type(exc).__name__}: {exc}"


def _basic(auth: str) -> tuple[str, str]:
    """Prefect compares the whole ``user:password`` string of HTTP Basic auth with its auth string."""
    user, _, password = auth.partition(":")
    return user, password


@contextlib.contextmanager
def state_lock(name: str = STATE_FILE):
    """One starter or stopper at a time of what ``$PREFECT_HOME/name`` describes: two commands starting together share one."""
    import fcntl

    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / (name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def start(timeout: float = 180.0, port: int | None = None) -> dict:
    """The running shared server, or a new one started in the background (detached: it outlives this command).

    ``port``: where a new server listens (default: a free port). Waits until the server
    answers as ours; raises ServerError naming the log when it does not.
    """
    with state_lock():
        st = running()
        if st:  # started by another command: running, or still coming up; wait for it rather than start a second
            why = _wait_ready(st, _read_auth(), timeout)
            if not why:
                return st
            raise ServerError(f"the shared Prefect server (pid {st['pid']}) does not answer at {st['api_url']}: {why}; see {st['log']}, or run `aifeedback server stop` and retry")
        _discard()  # none, or a stale record: its pid is not the process it names
        return _launch(timeout, port)


def _launch(timeout: float, port: int | None) -> dict:
    if port is not None and _port_taken(port):
        raise ServerError(f"port {port} on {HOST} is already in use by another process: choose another port, or leave it to pick a free one")
    port = port or _free_port()
    home = prefect_home()
    log = home / "aifeedback-server.log"
    auth = f"aifeedback:{secrets.token_urlsafe(32)}"
    _write_private(auth_path(), auth)
    origins = f"http://{HOST}:{port},http://localhost:{port}"  # the server's own UI, under either name
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env.update(
        PREFECT_SERVER_API_AUTH_STRING=auth,  # in the environment (readable by its owner only), never on the command line
        PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS=origins,
        PREFECT_SERVER_API_HOST=HOST,
        PREFECT_SERVER_API_PORT=str(port),  # so the UI calls this API, not the default port
        PREFECT_UI_ENABLED=os.environ.get("PREFECT_UI_ENABLED", "true"),
    )
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: `stop` ends the whole tree; the command's signals do not reach it
        )
    try:  # record it before anything else can fail: a process that is not recorded is killed here, never orphaned
        ident = procs.identity(proc.pid) or {"cmdline": cmd, "start_time": None}
        st = {
            "pid": proc.pid,
            "port": port,
            "api_url": f"http://{HOST}:{port}/api",
            "ui_url": f"http://{HOST}:{port}",
            "log": str(log),
            "auth_file": str(auth_path()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prefect_home": str(home),
            **ident,
        }
        _write_state(st)
    except BaseException:
        procs.kill_group(proc.pid, timeout=5.0)
        proc.wait()
        _discard()
        raise
    why = _wait_ready(st, auth, timeout, proc)
    if not why:
        return st
    exited = proc.poll() is not None  # on its own, before we signal it
    # our own child, not yet reaped, so its pid names no other process: killed without an identity check, and waited on
    procs.kill_group(proc.pid, timeout=15.0)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        why += f"; pid {proc.pid} did not exit after SIGKILL"
    _discard()
    taken = f"; port {port} is held by another process" if exited and _port_taken(port) else ""
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
    raise ServerError(f"the shared Prefect server did not come up: {why}{taken} (log {log}):\n{tail}")


def _wait_ready(st: dict, auth: str | None, timeout: float, proc: subprocess.Popen | None = None) -> str:
    """"" once the recorded server answers as ours within ``timeout`` s, else why not.

    ``proc``: the server when this process started it (alive while ``poll`` is None); else the
    recorded process must stay the one recorded (``procs.matches``).
    """
    if not auth:
        return f"its auth file {auth_path()} is missing"
    deadline = time.monotonic() + timeout
    why = "not checked"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"it exited with code {proc.returncode}"
        if proc is None and not procs.matches(st["pid"], st):
            return f"pid {st['pid']} is no longer the process recorded"
        why = _probe(st, auth)
        if not why:
            return ""
        time.sleep(0.25)
    return f"it did not answer within {timeout:.0f} s (last check: {why})"


def stop(timeout: float = 15.0) -> dict | None:
    """Stop the shared server (its whole process group); returns what was stopped, or None when none was running.

    A stale record (its pid now names another process, or none) is removed and nothing is signalled.
    """
    with state_lock():
        st = running()
        if st is None:
            _discard()
            return None
        _stop_recorded(st, timeout)
        return st


def _stop_recorded(st: dict, timeout: float = 15.0) -> None:
    if procs.matches(st["pid"], st):
        procs.kill_group(st["pid"], timeout)
    _discard()


def configured_api_url() -> str | None:
    """The API the user configured (environment or Prefect profile), if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


@contextlib.contextmanager
def command_api():
    """Run a command's flows against the configured API, else the shared local server (started when needed).

    Yields the shared server's API URL, or None when a configured API or the temporary
    server (``AIFEEDBACK_PREFECT_SERVER=temporary``) is used. Inside, Prefect's client
    settings (``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING``) point at the shared server,
    in this process and in the environment its child processes (Ray workers) inherit.
    """
    mode = os.environ.get(MODE_ENV, "shared")
    if mode not in ("shared", "temporary"):
        from .errors import ConfigError

        raise ConfigError(f"{MODE_ENV}={mode!r}: use shared (one local Prefect server for every command) or temporary (one per process)")
    if mode == "temporary" or configured_api_url():
        yield None
        return
    st = start()
    auth = _read_auth()
    if not auth:
        raise ServerError(f"the shared Prefect server's auth file {auth_path()} is missing: run `aifeedback server stop`, then `aifeedback server start`")
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates = {"PREFECT_API_URL": st["api_url"], "PREFECT_API_AUTH_STRING": auth}
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        with temporary_settings(updates={PREFECT_API_URL: st["api_url"], PREFECT_API_AUTH_STRING: auth}):
            yield st["api_url"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
