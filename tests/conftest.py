"""Shared fixtures: Prefect in a temporary home, the embedded backend, a real llama.cpp server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Prefect reads its settings at import: a private home per test session, no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="aif-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")  # the temporary server stops before the last logs

from aifeedback.prefect_env import configure  # noqa: E402

configure()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded_backend():
    from aifeedback.config import BackendConfig
    from aifeedback.stage import cached_backend

    return cached_backend(BackendConfig())


class LlamaServer:
    def __init__(self, port: int, proc: subprocess.Popen, log: Path):
        self.port, self.proc, self.log = port, proc, log
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_llama_server(tmp_dir: Path, api_key: str | None = None) -> LlamaServer:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extra: pip install 'aifeedback[test]'")
    from aifeedback.models import smollm2_gguf

    port = free_port()
    log = tmp_dir / f"llama-server-{port}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    if api_key:
        cmd += ["--api_key", api_key]  # the server then answers 401 to any other key
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2, headers=headers).status_code == 200:
                return LlamaServer(port, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"llama.cpp server did not come up in 120 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared human-preference data not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary server while pytest's output is still open (else it logs to a closed stream)."""
    try:
        import logging

        from prefect.server.api.server import SubprocessASGIServer

        logging.getLogger("prefect").setLevel(logging.WARNING)
        for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
            server.stop()
    except Exception:
        pass
