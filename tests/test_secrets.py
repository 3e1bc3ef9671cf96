"""Secrets: with fake keys in the environment, a label flow over HTTP, an agreement report and an export
(with a failing push) write the keys nowhere: not in any file, not in any log line, not in Prefect's database."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, start_llama_server


def _cli() -> list[str]:
    exe = REPO / ".venv" / "bin" / "aifeedback"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p} holds {n[:6]!r}..." for n in needles if n in data]
    return hits


@pytest.mark.slow  # starts a llama.cpp server
@pytest.mark.timeout(1200)
def test_keys_appear_in_no_file_and_no_log_line(tmp_path):
    api_key = "sk-aif-" + secrets.token_hex(16)
    server = start_llama_server(tmp_path, api_key=api_key)  # refuses any other key: the key is really sent
    try:
        _run_everything(tmp_path, api_key, server)
    finally:
        server.stop()


def _run_everything(tmp_path, api_key, llama_server):
    hf_token = "hf_" + secrets.token_hex(16)
    needles = [api_key.encode(), hf_token.encode(), api_key[7:].encode(), hf_token[3:].encode()]
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"pair_id": "q1", "prompt": "What is 2+2?", "response_a": "4.", "response_b": "22."},
        {"pair_id": "q2", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "A cucumber."},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    human = tmp_path / "human.jsonl"
    human.write_text('{"pair_id": "q1", "label": "A"}\n{"pair_id": "q2", "label": "A"}\n')
    home = tmp_path / "prefect-home"
    env = dict(
        os.environ,
        OPENAI_API_KEY=api_key,
        HF_TOKEN=hf_token,
        PREFECT_HOME=str(home),
        PREFECT_LOGGING_LEVEL="DEBUG",  # the most talkative logs
        PREFECT_LOGGING_TO_API_ENABLED="true",  # and into Prefect's database
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens: the push fails
        COLUMNS="200",
        AIFEEDBACK_PREFECT="1",  # --prefect: run as Prefect flows, so Prefect's database and logs are written (and searched)
    )
    env.pop("PREFECT_API_URL", None)
    run = tmp_path / "run"
    steps = [
        ["label", "--run-dir", str(run), "--input", str(pairs), "--backend", "openai", "--base-url", llama_server.base_url, "--model", "smollm2", "--set", "tie_margin=0"],
        ["agreement", "--human", str(human), "--human-format", "generic", "--run", f"ai={run}", "--out", str(run / "agreement")],
        ["export", "--run-dir", str(run), "--to-dir", str(tmp_path / "export"), "--repo-id", "someone/aif-secrets-test"],
    ]
    # a wrong key: a clear error naming the variable, and neither key in the output
    wrong = subprocess.run(_cli() + steps[0][:2] + [str(tmp_path / "wrong-key-run")] + steps[0][3:], env=dict(env, OPENAI_API_KEY="sk-wrong-" + secrets.token_hex(8)), capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert wrong.returncode != 0 and "OPENAI_API_KEY" in (wrong.stdout + wrong.stderr), wrong.stdout[-2000:] + wrong.stderr[-2000:]
    logs = [wrong.stdout + wrong.stderr]
    codes = []
    for args in steps:
        out = subprocess.run(_cli() + args, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        logs.append(out.stdout + out.stderr)
        codes.append(out.returncode)
    assert codes[0] == 0 and codes[1] == 0, logs[1:3]
    assert codes[2] == 2 and "error" in logs[3].lower(), logs[3]  # the push fails offline, with a clear message
    assert (tmp_path / "export" / "README.md").is_file(), logs[3]  # and leaves the local export
    assert (run / "agreement" / "report.html").is_file() or any((run / "agreement").rglob("report.html"))
    for text in logs:
        for n in needles:
            assert n.decode() not in text, "a key appeared in the command output"
    hits = _files_containing(tmp_path, needles) + _files_containing(home, needles)
    assert not hits, hits
    assert any(home.rglob("*.db"))  # Prefect's database was written (and searched)
