"""`aifeedback doctor`: real checks of this machine, and a broken case that must exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import free_port

CLI = [sys.executable, "-m", "flows.cli"]


def _doctor(*args, **env):
    e = {**os.environ, "COLUMNS": "240", **env}
    return subprocess.run([*CLI, "doctor", *args], capture_output=True, text=True, timeout=120, env=e)


@pytest.mark.slow
def test_doctor_reports_this_machine_and_passes_when_nothing_is_broken():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run([*CLI, "doctor", "--json"], capture_output=True, text=True, timeout=120, env={**env, "COLUMNS": "240"})
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    for name in ("cpu", "torch", "cache", "backend transformers", "backend openai", "backend vllm", "model policy/labeler", "model reward backbone", "prefect", "ray"):
        assert name in checks, name
    cpu_line = open("/proc/cpuinfo").read()
    assert ("avx2" in cpu_line) == ("avx2" in checks["cpu"]["detail"])
    import torch

    assert torch.__version__ in checks["torch"]["detail"] and f"{torch.get_num_threads()} threads" in checks["torch"]["detail"]
    assert "GB free" in checks["cache"]["detail"]
    assert checks["model policy/labeler"]["status"] == "ok" and "offline" in checks["model policy/labeler"]["detail"]
    assert all(c["status"] != "fail" for c in checks.values())
    table = _doctor()
    assert table.returncode == 0 and "aifeedback doctor" in table.stdout and "backend transformers" in table.stdout


def test_doctor_fails_on_an_unreachable_prefect_api():
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    out = _doctor(PREFECT_API_URL=url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "unreachable" in out.stdout and url in out.stdout
    assert "broken: prefect" in out.stdout
    assert "prefect server start" in out.stdout  # names the fix


def test_doctor_fails_when_the_cache_is_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    out = _doctor("--json", AIFEEDBACK_CACHE=str(blocker / "cache"))
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    # root can write anywhere, so the folder is made impossible: its parent is a file
    assert out.returncode == 1 and checks["cache"]["status"] == "fail" and "AIFEEDBACK_CACHE" in checks["cache"]["detail"], out.stdout
