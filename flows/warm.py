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
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

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
_VOLATILE = {"PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND", "SHELL", "MAIL", "LS_COLORS", "DISPLAY", "SSH_AUTH_SOCK", "COLORTERM", "PYTEST_CURRENT_TEST"}


# -- where a host lives -----------------------------------------------------------------------------
def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def state_path() -> Path:
    return _prefect_home() / STATE_FILE


def fingerprint() -> str:
    """What a warm child must share with the command it runs: the interpreter, the packages, the import-time environment."""
    import sysconfig

    purelib = sysconfig.get_paths()["purelib"]
    try:
        packages = os.stat(purelib).st_mtime_ns
    except OSError:
        packages = 0
    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE and not k.startswith(_VOLATILE_PREFIXES))
    blob = json.dumps([sys.executable, purelib, packages, str(_prefect_home().resolve()), env])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _socket_path(key: str) -> Path:
    base = Path(os.environ.get("TMPDIR") or "/tmp") / f"aifeedback-warm-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    return base / f"{key}.sock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _read_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None


def status() -> dict | None:
    """The running host of this PREFECT_HOME (whatever its fingerprint), else None."""
    st = _read_state()
    if st and _alive(int(st.get("pid", -1))) and Path(st["socket"]).exists():
        return st
    return None


# -- starting and stopping ----------------------------------------------------------------------------
def start(watch_pid: int, wait: float = 0.0, replace: bool = False) -> dict | None:
    """Start a host for this command's fingerprint, living as long as process ``watch_pid`` (the shared server).

    A running host with another fingerprint is kept (None is returned) unless ``replace``
    (`aifeedback server start` replaces it; a stage command does not). With ``wait`` > 0, waits that
    long for it to accept commands; returns its state, or None when it is off or not ready in time.
    """
    if os.environ.get(ENABLE_ENV, "1") == "0":
        return None
    key = fingerprint()
    st = status()
    if st and st.get("key") == key and st.get("watch_pid") == watch_pid:
        return st
    if st and _alive(int(st["watch_pid"])) and not replace:
        return None
    stop()
    home = _prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "aifeedback-warm.log"
    with open(log, "ab") as fh:
        import subprocess

        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "flows.warm", "serve", "--watch-pid", str(watch_pid), "--key", key],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,  # the command's signals do not reach it; it outlives the command
        )
    st = {"pid": proc.pid, "key": key, "socket": str(_socket_path(key)), "watch_pid": watch_pid, "log": str(log), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=1))
    os.replace(tmp, state_path())
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if Path(st["socket"]).exists():
            return st
        time.sleep(0.1)
    return st if Path(st["socket"]).exists() else None


def stop(timeout: float = 10.0) -> dict | None:
    """Stop this PREFECT_HOME's host (commands it is running finish); returns what was stopped, or None."""
    st = _read_state()
    if not st:
        return None
    pid = int(st.get("pid", -1))
    if pid > 0 and _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
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

    import flows  # noqa: F401  (sets the environment defaults a command sets before these imports)

    t0 = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    print(f"{time.strftime('%H:%M:%S')} host {os.getpid()}: imported {', '.join(PRELOAD)} in {time.perf_counter() - t0:.1f} s", flush=True)
    path = _socket_path(key)
    tmp = path.with_suffix(".bind")
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
        while _alive(watch_pid):
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


def _child(conn: socket.socket) -> None:
    """Become the command: its stdio, directory, environment, path and arguments; run the CLI; report the exit status."""
    import atexit
    import io
    import random
    import threading

    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        req = _recv_msg(conn)
    except (OSError, EOFError, ValueError):
        os._exit(1)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    enc = req.get("encoding") or "utf-8"
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", buffering=-1, closefd=False), encoding=enc)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.open(fd, "wb", buffering=-1, closefd=False), encoding=enc, errors="backslashreplace" if fd == 2 else "strict", line_buffering=os.isatty(fd) or fd == 2, write_through=fd == 2)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = req["argv"]
    sys.path[:] = req["path"]
    random.seed()  # a cold process seeds from the OS; forked children would otherwise share one state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    done = {"code": 1, "sent": False}

    def report() -> None:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        with contextlib.suppress(OSError):
            _send_msg(conn, {"exit": done["code"]})
        done["sent"] = True

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
def delegate(argv: list[str]) -> int | None:
    """Run this command in the warm host and return its exit status, or None to run it here (cold)."""
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
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(_socket_path(key)))
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        _send_msg(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path, "encoding": getattr(sys.stdout, "encoding", None)})
        child = int(_recv_msg(conn)["pid"])
    except (OSError, EOFError, ValueError, KeyError):
        conn.close()
        return None  # no child started: run cold
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    try:
        return int(_recv_msg(conn)["exit"])
    except (OSError, EOFError, ValueError, KeyError):
        print(f"aifeedback: the command's process ({child}) ended without an exit status (killed?)", file=sys.stderr)
        return 1
    finally:
        conn.close()


def main() -> None:
    """The ``aifeedback`` console script: the warm host when one matches, else the CLI in this process."""
    import flows  # noqa: F401  (environment defaults, before the fingerprint)

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
