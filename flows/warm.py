"""The warm command host: stage commands skip re-importing torch and transformers.

Every ``aifeedback`` command is a new Python process. Before its first model call
it imports torch and transformers, 6-8 s on a 2-core machine
(docs/performance.md), and that is most of a short command. The host is one
background process that has imported them once; it forks a child for each
command. The child takes over the command's terminal: the command's stdin,
stdout and stderr file descriptors are passed over a Unix socket. It also takes
the command's working directory, environment, ``sys.path`` and arguments, then
runs the CLI exactly as the cold process would and sends back its exit status.
Prefect and aifeedback's own modules are imported in the child, not the host:
Prefect reads its settings from the environment when it is imported, and an
edited source tree is picked up by the next command.

When it is used:

- ``aifeedback server start`` starts it beside the shared Prefect server. So does
  the first stage command that starts that server, once its own work is done.
  It lives as long as that server, and ``aifeedback server stop`` stops both.
- A command hands itself to the host only in the shared-server mode, and only
  when the host's fingerprint matches the command's. The fingerprint covers the
  Python executable, the installed packages (site-packages' modification time),
  ``PREFECT_HOME`` and the environment, minus the variables read only after
  start-up (``PREFECT_*``, ``AIFEEDBACK_*``, ``OPENAI_*``, the shell's own). It
  is stored as a hash only, so no value reaches the disk. Otherwise the command
  runs cold, as before.
- ``AIFEEDBACK_WARM=0`` turns it off.

A kill -9 of the command closes its end of the socket, and the child then kills
itself, so nothing is left running. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to
the command are passed on to the child. Only processes of the same user may
connect (``SO_PEERCRED``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from aifeedback.prefect_server import alive, prefect_home, read_json, state_lock

ENABLE_ENV = "AIFEEDBACK_WARM"
STATE_FILE = "aifeedback-warm.json"
PRELOAD = (  # third-party modules only: what a stage command imports before its first model call
    "torch",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
)
NOT_DELEGATED = {"server", "--help", "-h", "--install-completion", "--show-completion"}
_VOLATILE_PREFIXES = ("PREFECT_", "AIFEEDBACK_", "OPENAI_", "SSH_", "TMUX", "XDG_SESSION", "WINDOW", "TERM_", "VSCODE_")
_VOLATILE = {"PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND", "SHELL", "MAIL", "LS_COLORS", "DISPLAY", "SSH_AUTH_SOCK", "COLORTERM"}


# -- where a host lives -----------------------------------------------------------------------------
def state_path() -> Path:
    return prefect_home() / STATE_FILE


_START_ENV: dict[str, str] | None = None  # the environment as the command started (main()), before the command changed it


def _env() -> dict[str, str]:
    return dict(_START_ENV if _START_ENV is not None else os.environ)


def fingerprint() -> str:
    """What a warm child must share with the command it runs: the interpreter, the packages, the CPUs, the import-time environment."""
    import sysconfig

    purelib = sysconfig.get_paths()["purelib"]
    try:
        packages = os.stat(purelib).st_mtime_ns
    except OSError:
        packages = 0
    env = sorted((k, v) for k, v in _env().items() if k not in _VOLATILE and not k.startswith(_VOLATILE_PREFIXES))
    cpus = sorted(os.sched_getaffinity(0))  # OpenMP sizes its pool from this when torch loads
    blob = json.dumps([sys.executable, purelib, packages, str(prefect_home().resolve()), cpus, env])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _socket_path(key: str) -> Path:
    base = Path(os.environ.get("TMPDIR") or "/tmp") / f"aifeedback-warm-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    return base / f"{key}.sock"


def _is_host(pid: int) -> bool:
    """pid is alive and is a warm host (not another process that got the pid after a reboot)."""
    if pid <= 0 or not alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return b"flows.warm" in argv and b"serve" in argv


def _read_state() -> dict | None:
    return read_json(state_path())


def status() -> dict | None:
    """The host of this PREFECT_HOME that accepts commands (whatever its fingerprint), else None."""
    st = _read_state()
    if st and _is_host(int(st.get("pid", -1))) and Path(st["socket"]).exists():
        return st
    return None


# -- starting and stopping ----------------------------------------------------------------------------
def start(watch_pid: int, wait: float = 0.0, replace: bool = False) -> dict | None:
    """Start a host for this command's fingerprint, living as long as process ``watch_pid`` (the shared server).

    A running host with another fingerprint is kept (None is returned) unless ``replace``
    (`aifeedback server start` replaces it; a stage command does not). With ``wait`` > 0, waits that
    long for it to accept commands; returns its state, or None when it is off or not ready in time.
    """
    if _env().get(ENABLE_ENV, "1") == "0":
        return None
    key = fingerprint()
    with state_lock(STATE_FILE):
        st = _read_state()
        running = st is not None and _is_host(int(st.get("pid", -1)))
        if running and st.get("key") == key and st.get("watch_pid") == watch_pid:
            pass  # this one (perhaps still importing)
        elif running and alive(int(st.get("watch_pid", -1))) and not replace:
            return None
        else:
            _stop_locked()
            st = _spawn(watch_pid, key)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and _is_host(st["pid"]) and not Path(st["socket"]).exists():
        time.sleep(0.1)
    return st if _is_host(st["pid"]) and Path(st["socket"]).exists() else None


def _spawn(watch_pid: int, key: str) -> dict:
    import subprocess

    home = prefect_home()
    log = home / "aifeedback-warm.log"
    # the command's environment as it started, without what the host never needs (API keys, our switches)
    env = {k: v for k, v in _env().items() if not k.startswith(("OPENAI_", "AIFEEDBACK_"))}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "flows.warm", "serve", "--watch-pid", str(watch_pid), "--key", key],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=env,
            start_new_session=True,  # the command's signals do not reach it; it outlives the command
        )
    st = {"pid": proc.pid, "key": key, "socket": str(_socket_path(key)), "watch_pid": watch_pid, "log": str(log), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = state_path().with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(st, indent=1))
    os.replace(tmp, state_path())
    return st


def stop(timeout: float = 10.0) -> dict | None:
    """Stop this PREFECT_HOME's host (commands it is running finish); returns what was stopped, or None."""
    with state_lock(STATE_FILE):
        return _stop_locked(timeout)


def _stop_locked(timeout: float = 10.0) -> dict | None:
    st = _read_state()
    if not st:
        return None
    pid = int(st.get("pid", -1))
    if _is_host(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if _is_host(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        Path(st["socket"]).unlink()
    state_path().unlink(missing_ok=True)
    return st


# -- the host ---------------------------------------------------------------------------------------------
def serve(watch_pid: int, key: str) -> None:
    """Import the heavy modules, then fork a child per connection until ``watch_pid`` ends or SIGTERM."""
    import importlib

    # the environment is the starting command's, with flows' defaults already set (flows/__init__.py)
    t0 = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    print(f"{time.strftime('%H:%M:%S')} host {os.getpid()}: imported {', '.join(PRELOAD)} in {time.perf_counter() - t0:.1f} s", flush=True)
    path = _socket_path(key)
    tmp = path.with_suffix(f".{os.getpid()}.bind")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(16)
    os.replace(tmp, path)  # appears only when it accepts
    listener.settimeout(2.0)
    host = os.getpid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while alive(watch_pid):
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != os.getuid():
                conn.close()
                continue
            child = os.fork()
            if child == 0:
                listener.close()
                _child(conn)  # never returns: ends the child through SystemExit
            conn.close()
            print(f"{time.strftime('%H:%M:%S')} host {host}: forked {child} for command process {pid}", flush=True)
    finally:
        if os.getpid() == host:
            path.unlink(missing_ok=True)
            st = _read_state()
            if st and st.get("pid") == host:
                state_path().unlink(missing_ok=True)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError("the command closed the connection")
        buf += part
    return buf


def _send_msg(conn: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv_msg(conn: socket.socket) -> dict:
    (n,) = struct.unpack("!I", _recv_exact(conn, 4))
    return json.loads(_recv_exact(conn, n))


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _stream(fd: int, spec: dict) -> io.TextIOWrapper:
    """A text stream on fd built as the command's own was (encoding, errors, buffering)."""
    raw = io.open(fd, "rb" if fd == 0 else "wb", buffering=-1, closefd=False)
    return io.TextIOWrapper(raw, encoding=spec.get("encoding") or "utf-8", errors=spec.get("errors") or "strict", line_buffering=bool(spec.get("line_buffering")), write_through=bool(spec.get("write_through")))


def _child(conn: socket.socket) -> None:
    """Become the command: its stdio, directory, environment, path, umask and signals; run the CLI; report the exit status."""
    import atexit
    import random
    import threading

    os.setpgid(0, 0)  # its own process group: the command's signals reach the child's subprocesses too
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        req = _recv_msg(conn)
    except (OSError, EOFError, ValueError):
        os._exit(1)
    for sig in FORWARDED + (signal.SIGTSTP, signal.SIGCONT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it
    for num in req.get("ignored", []):  # nohup, `&` in scripts: what the command ignored, the child ignores
        signal.signal(signal.Signals(num), signal.SIG_IGN)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        stream = _stream(fd, req["streams"][name])
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.chdir(req["cwd"])
    os.umask(req["umask"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = req["argv"]
    sys.path[:] = req["path"]
    for name in [m for m in sys.modules if m.split(".")[0] in ("flows", "aifeedback", "labelers", "trainers")]:
        del sys.modules[name]  # the project's own code comes from the command's path, as edited now
    import flows.warm

    flows.warm._START_ENV = dict(req["env"])
    random.seed()  # a cold process seeds from the OS; forked children would otherwise share one state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    done = {"code": 1, "sent": False}

    def report() -> None:
        for st in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                st.flush()
        done["sent"] = True  # before sending: the command may close as soon as it has the status
        with contextlib.suppress(OSError):
            _send_msg(conn, {"exit": done["code"]})

    def watch() -> None:  # the command went away (kill -9, closed terminal): end the child too
        with contextlib.suppress(OSError):
            while conn.recv(64):
                pass
        if not done["sent"]:
            os.kill(os.getpid(), signal.SIGKILL)

    atexit.register(report)  # registered first, so it runs after every handler the command registers
    _send_msg(conn, {"pid": os.getpid()})
    threading.Thread(target=watch, name="aifeedback-warm-watch", daemon=True).start()
    try:
        from flows.cli import app

        app(prog_name="aifeedback")
    except SystemExit as e:
        done["code"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except KeyboardInterrupt:
        done["code"] = 130
        raise
    except BaseException:
        done["code"] = 1
        raise
    done["code"] = 0
    sys.exit(0)


# -- the command's side ---------------------------------------------------------------------------------
def _stream_spec(stream) -> dict:
    return {
        "encoding": getattr(stream, "encoding", None),
        "errors": getattr(stream, "errors", None),
        "line_buffering": getattr(stream, "line_buffering", False),
        "write_through": getattr(stream, "write_through", False),  # python -u, PYTHONUNBUFFERED
    }


def delegate(argv: list[str]) -> int | None:
    """Run this command in the warm host and return its exit status, or None to run it here (cold).

    A child that ends without a status (killed by a signal) is reported the way the shell reports
    a killed process: this process ends by the same signal when it was the one passed on.
    """
    if os.environ.get(ENABLE_ENV, "1") == "0" or len(argv) < 2 or argv[1] in NOT_DELEGATED:
        return None
    if os.environ.get("AIFEEDBACK_PREFECT_SERVER", "shared") != "shared":
        return None
    st = _read_state()
    if not st:
        return None
    key = fingerprint()
    if st.get("key") != key:
        return None
    ignored = [int(s) for s in FORWARDED if signal.getsignal(s) is signal.SIG_IGN]
    umask = os.umask(0)
    os.umask(umask)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10.0)  # a host that is stopping or hung: run cold
    try:
        conn.connect(str(_socket_path(key)))
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        streams = {"stdin": _stream_spec(sys.stdin), "stdout": _stream_spec(sys.stdout), "stderr": _stream_spec(sys.stderr)}
        _send_msg(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path, "umask": umask, "ignored": ignored, "streams": streams})
        child = int(_recv_msg(conn)["pid"])
    except (OSError, EOFError, ValueError, KeyError):
        conn.close()
        return None  # no child started: run cold
    conn.settimeout(None)
    passed: list[int] = []

    def forward(sig: int, _frame) -> None:
        passed.append(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, sig)

    def suspend(sig: int, _frame) -> None:  # Ctrl-Z: stop the child's group, then this process; resume both
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGCONT)

    for sig in FORWARDED:
        if int(sig) not in ignored:
            signal.signal(sig, forward)
    signal.signal(signal.SIGTSTP, suspend)
    try:
        code = int(_recv_msg(conn)["exit"])
    except (OSError, EOFError, ValueError, KeyError):
        if passed:  # it ended by the signal passed on: so does this process, as a cold one would
            signal.signal(passed[-1], signal.SIG_DFL)
            os.kill(os.getpid(), passed[-1])
            time.sleep(1)
        print(f"aifeedback: the command's process ({child}) ended without an exit status (killed?)", file=sys.stderr)
        return 1
    # the status comes from the child's last exit handlers: wait (briefly) for it to be gone, so the
    # next command in a script does not start beside it
    conn.settimeout(30.0)
    with contextlib.suppress(OSError):
        while conn.recv(64):
            pass
    conn.close()
    return code


def main() -> None:
    """The ``aifeedback`` console script: the warm host when one matches, else the CLI in this process."""
    global _START_ENV
    import flows  # noqa: F401  (environment defaults, before the fingerprint)

    _START_ENV = dict(os.environ)
    code = delegate(sys.argv)
    if code is not None:
        sys.exit(code)
    from flows.cli import app

    app(prog_name="aifeedback")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        import argparse

        ap = argparse.ArgumentParser(prog="python -m flows.warm serve")
        ap.add_argument("serve")
        ap.add_argument("--watch-pid", type=int, required=True)
        ap.add_argument("--key", required=True)
        a = ap.parse_args()
        serve(a.watch_pid, a.key)
    else:
        main()
