"""Processes named by a pid in a file, checked before anyone waits on them or signals them.

A pid alone does not name a process: after a reboot or a container restart the same
number belongs to whatever started next. ``identity(pid)`` is the process's command
line and start time (on Linux the boot id and the start tick from ``/proc``, exact;
elsewhere psutil's create time). A recorded process ``matches`` only when both are
unchanged, so a stale file never makes us wait on, or signal, someone else's process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> dict | None:
    """``{"cmdline": [...], "start_time": str}`` of a live process, or None when it is gone or a zombie."""
    if pid <= 0:
        return None
    if not Path("/proc/self/stat").is_file():
        return _identity_psutil(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state (field 3), fields[19] the start tick (field 22)
    if fields[0] in ("Z", "X"):
        return None
    return {"cmdline": cmdline.decode(errors="replace").split("\0")[:-1], "start_time": f"{_boot_id()}:{fields[19]}"}


def _identity_psutil(pid: int) -> dict | None:
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return {"cmdline": p.cmdline(), "start_time": f"{p.create_time():.3f}"}
    except psutil.Error:
        return None


def matches(pid: int, recorded: dict) -> bool:
    """The live process ``pid`` is the one ``recorded`` (same command line and start time)."""
    now = identity(pid)
    return now is not None and bool(recorded.get("cmdline")) and now["cmdline"] == recorded.get("cmdline") and now["start_time"] == recorded.get("start_time")


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    import psutil

    out = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
    return out


def kill_group(pgid: int, timeout: float = 15.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after ``timeout`` s. Only for a group whose leader ``matches``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.1)
        if not group_members(pgid):
            return


def group_listens(pgid: int, port: int, host: str = "127.0.0.1") -> bool:
    """A process of group ``pgid`` holds the listening TCP socket on ``host:port`` (so a connection there reaches it, not a squatter)."""
    import psutil

    for pid in group_members(pgid):
        try:
            conns = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.laddr.ip in (host, "0.0.0.0", "::") for c in conns):
            return True
    return False
