"""Keys go only where they belong, and no secret is written to disk.

- The openai backend sends a key over plain http only to this machine (127.0.0.0/8, ::1, localhost),
  unless ``backend.allow_insecure_key``; a key-less server over http needs nothing.
- ``backend.api_key_env`` names an endpoint's key (``*_API_KEY``), so a shared config cannot send
  ``HF_TOKEN`` or ``AWS_SECRET_ACCESS_KEY`` to its URL.
- With fake keys in the environment and in a plugin backend's ``backend.options``, label runs (as
  Prefect flows) and an export write none of them: not in the run folders, the export folder
  (data set card, provenance) or Prefect's database (flow-run parameters).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aifeedback.config import BackendConfig, LabelConfig, SamplingConfig, build_config
from aifeedback.errors import BackendError, ConfigError
from aifeedback.redact import REDACTED, is_secret_name, redact, redact_text

from conftest import REPO, start_llama_server

PLUGIN = "test_no_secrets_written:KeyInOptions"


# redaction, known answers ---------------------------------------------------


def test_redact_hides_secret_names_token_shapes_and_secret_environment_values(monkeypatch):
    hf, custom = "hf_" + "A1" * 17, "custom-" + secrets.token_hex(8)
    monkeypatch.setenv("HF_TOKEN", hf)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy-" + "b" * 20)
    monkeypatch.setenv("MY_ENDPOINT_API_KEY", custom)
    monkeypatch.setenv("AIF_PLAIN_SETTING", "not-a-secret-value")  # not a secret's name: left alone
    cfg = {
        "backend": {
            "kind": "my_pkg.backend:Mine",
            "api_key_env": "OPENAI_API_KEY",  # names a variable, holds no secret
            "options": {"api_key": "sekrit-1", "authToken": "t-2", "client_secret": {"id": 3}, "password": "p", "empty_token": "", "use_auth": True, "region": "eu"},
        },
        "sampling": {"max_new_tokens": 8},
        "key_config": {"keys": ["0123abcd"], "batch_key": "feed"},
        "notes": [f"pushed with {hf}", "Authorization: Bearer abcdefgh1234", "key sk-proj-" + "x" * 20, f"x{custom}y", "not-a-secret-value", "task-0123456789abcdefghij"],
    }
    assert redact(cfg) == {
        "backend": {
            "kind": "my_pkg.backend:Mine",
            "api_key_env": "OPENAI_API_KEY",
            "options": {"api_key": REDACTED, "authToken": REDACTED, "client_secret": REDACTED, "password": REDACTED, "empty_token": "", "use_auth": True, "region": "eu"},
        },
        "sampling": {"max_new_tokens": 8},
        "key_config": {"keys": ["0123abcd"], "batch_key": "feed"},
        "notes": [f"pushed with {REDACTED}", f"Authorization: {REDACTED}", f"key {REDACTED}", f"x{REDACTED}y", "not-a-secret-value", "task-0123456789abcdefghij"],
    }
    # what flows/export.py's _redact did, as a subset: the Hub token's value, wherever it is in a text
    assert redact_text(f"token {hf} and legacy-{'b' * 20}.") == f"token {REDACTED} and {REDACTED}."


@pytest.mark.parametrize(
    ("name", "secret"),
    [("api_key", True), ("apiKey", True), ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("db_password", True), ("basic_auth", True),
     ("api_key_env", False), ("max_new_tokens", False), ("tokens_per_minute", False), ("key_config", False), ("partial_keys", False), ("author", False), ("item_key", False)],
)
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_the_loop_config_is_written_redacted_and_a_rerun_still_matches_it(tmp_path):
    from trainers.loop.config import LoopConfig
    from trainers.loop.rundir import check_run_config

    key = "sekrit-FAKE-" + secrets.token_hex(8)
    cfg = LoopConfig(label={"backend": {"kind": "my_pkg.backend:Mine", "options": {"api_key": key, "style": "plain"}}})
    check_run_config(tmp_path, cfg)
    written = (tmp_path / "loop_config.json").read_text()
    assert key not in written and json.loads(written)["label"]["backend"]["options"] == {"api_key": REDACTED, "style": "plain"}
    check_run_config(tmp_path, cfg)  # the same config again: resumes, no "other settings" error
    with pytest.raises(ConfigError, match=r"label\.backend\.options\.style"):
        check_run_config(tmp_path, LoopConfig(label={"backend": {"kind": "my_pkg.backend:Mine", "options": {"api_key": key, "style": "other"}}}))


# api_key_env: only an endpoint's key -----------------------------------------


@pytest.mark.parametrize("name", ["HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "PREFECT_API_KEY", "PATH"])
def test_a_shared_config_cannot_send_another_secret_to_its_url(tmp_path, name):
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"backend:\n  kind: openai\n  base_url: https://judge.example.com/v1\n  api_key_env: {name}\n")
    with pytest.raises(ConfigError) as err:
        build_config(LabelConfig, shared)
    msg = str(err.value)
    assert "backend.api_key_env: api_key_env must name an endpoint's key" in msg and repr(name) in msg, msg
    assert "export MY_ENDPOINT_API_KEY=" in msg and "`backend.api_key_env`" in msg, msg  # the fix


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "TOGETHER_API_KEY", "MY_ENDPOINT_API_KEY"])
def test_an_endpoint_key_variable_is_accepted(tmp_path, name):
    shared = tmp_path / "judge.yaml"
    shared.write_text(f"backend:\n  kind: openai\n  base_url: https://judge.example.com/v1\n  api_key_env: {name}\n")
    assert build_config(LabelConfig, shared).backend.api_key_env == name
    assert BackendConfig(kind="openai", base_url="https://x.example.com/v1").api_key_env == "OPENAI_API_KEY"


# the key over plain http -----------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in endpoint: records each request's Authorization header and answers 401 as OpenAI does to a bad key."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    """Listens on every address of this machine: reached as 127.0.0.1 (loopback) and as 0.0.0.0 (not a loopback address)."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Recorder)
    server.seen = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _call(base_url: str, **settings) -> None:
    """Build the openai backend and make one request (the recorder answers 401)."""
    from aifeedback.backends.openai_compat import OpenAIBackend

    backend = OpenAIBackend(BackendConfig(kind="openai", model="m", base_url=base_url, max_retries=0, timeout_s=10, **settings))
    try:
        with pytest.raises(BackendError, match="refused the credentials"):
            backend.generate([[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=1))
    finally:
        backend.close()


@pytest.mark.timeout(60)
def test_a_key_is_not_sent_over_http_off_this_machine(recorder, monkeypatch):
    from aifeedback.backends.openai_compat import OpenAIBackend

    key = "sk-test-FAKE" + secrets.token_hex(8)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    port = recorder.server_address[1]
    for url in (f"http://0.0.0.0:{port}/v1", "http://10.1.2.3:8000/v1", "http://127.example.com:8000/v1", "http://gpu-box.lan/v1"):
        with pytest.raises(BackendError) as err:
            OpenAIBackend(BackendConfig(kind="openai", base_url=url))
        msg = str(err.value)
        assert msg.startswith(f"refusing to send the key in $OPENAI_API_KEY to {url} over plain http"), msg
        assert "https://" in msg and "backend.allow_insecure_key=true" in msg and key not in msg, msg
    assert recorder.seen == []  # refused before any request

    _call(f"http://127.0.0.1:{port}/v1")  # loopback: sent
    _call(f"http://localhost:{port}/v1")
    _call(f"http://0.0.0.0:{port}/v1", allow_insecure_key=True)  # allowed by the user: sent, in the clear
    assert recorder.seen == [f"Bearer {key}"] * 3
    OpenAIBackend(BackendConfig(kind="openai", base_url="https://judge.example.com/v1")).close()  # https: fine

    monkeypatch.delenv("OPENAI_API_KEY")  # a server without auth over http, on another host: no key, nothing to refuse
    _call(f"http://0.0.0.0:{port}/v1")
    assert recorder.seen[-1] == "Bearer no-key"


# end to end: nothing written anywhere ------------------------------------------


class KeyInOptions:
    """A backend of your own whose settings, some secret, sit in ``backend.options`` (as users' plugins do).

    It serves through the openai backend on ``options["base_url"]`` and notes a hash of the option key it
    received in $AIF_PLUGIN_LOG, so the test sees that the backend got the key whole while nothing wrote it.
    """

    name = "key-in-options"

    def __init__(self, cfg):
        from aifeedback.backends.openai_compat import OpenAIBackend

        opts = cfg.options
        self.inner = OpenAIBackend(BackendConfig(kind="openai", model=cfg.model, base_url=opts["base_url"], api_key_env="AIF_TEST_API_KEY"))
        self.model_id = cfg.model
        with open(os.environ["AIF_PLUGIN_LOG"], "a") as fh:
            fh.write(json.dumps({"api_key_sha256": hashlib.sha256(opts["api_key"].encode()).hexdigest(), "style": opts.get("style")}) + "\n")

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _cli() -> list[str]:
    exe = REPO / ".venv" / "bin" / "aifeedback"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def _holding(roots: list[Path], needles: dict[str, str]) -> list[str]:
    hits = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                hits += [f"{p} holds {what}" for what, n in needles.items() if n.encode() in data]
    return hits


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fake_keys_in_the_environment_and_in_plugin_options_are_written_nowhere(tmp_path):
    env_key = "sk-test-FAKE" + secrets.token_hex(12)
    hf_token = "hf_FAKE" + secrets.token_hex(14)
    custom = "custom-FAKE-" + secrets.token_hex(12)  # the endpoint's key, in a variable of the user's naming
    opt_key, opt_token = "sekrit-FAKE-" + secrets.token_hex(8), "authtok-FAKE-" + secrets.token_hex(8)
    visible = "plain-FAKE-visible-" + secrets.token_hex(4)  # an option that is no secret: written, so the search finds what is there
    needles = {
        "$OPENAI_API_KEY": env_key, "$HF_TOKEN": hf_token, "$AIF_TEST_API_KEY": custom, "options.api_key": opt_key, "options.auth_token": opt_token,
        "part of $OPENAI_API_KEY": env_key[12:], "part of $HF_TOKEN": hf_token[7:], "part of $AIF_TEST_API_KEY": custom[12:], "part of options.api_key": opt_key[12:],
    }
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"pair_id": "q1", "prompt": "What is 2+2?", "response_a": "4.", "response_b": "22."},
        {"pair_id": "q2", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "A cucumber."},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    home, log = tmp_path / "prefect-home", tmp_path / "plugin.log"
    env = dict(
        os.environ,
        OPENAI_API_KEY=env_key,
        HF_TOKEN=hf_token,
        AIF_TEST_API_KEY=custom,
        PREFECT_HOME=str(home),
        PREFECT_LOGGING_LEVEL="DEBUG",
        PREFECT_LOGGING_TO_API_ENABLED="true",
        AIFEEDBACK_PREFECT="1",  # Prefect flows: their parameters go to Prefect's database, searched below
        AIF_PLUGIN_LOG=str(log),
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        COLUMNS="200",
    )
    env.pop("PREFECT_API_URL", None)
    env.pop("AIFEEDBACK_PREFECT_SERVER", None)
    run_a, run_b, export = tmp_path / "run-a", tmp_path / "run-b", tmp_path / "export"
    server = start_llama_server(tmp_path, api_key=custom)  # answers 401 to any other key: $AIF_TEST_API_KEY is really sent
    outputs = []
    try:
        label = ["label", "--input", str(pairs), "--model", "smollm2", "--set", "tie_margin=0"]
        steps = [
            label + ["--run-dir", str(run_a), "--backend", "openai", "--base-url", server.base_url, "--set", "backend.api_key_env=AIF_TEST_API_KEY"],
            label + ["--run-dir", str(run_b), "--set", f"backend.kind={PLUGIN}", "--set", f"backend.options.base_url={server.base_url}",
                     "--set", f"backend.options.api_key={opt_key}", "--set", f"backend.options.auth_token={opt_token}", "--set", f"backend.options.style={visible}"],
            ["export", "--run-dir", str(run_b), "--to-dir", str(export)],
        ]
        for args in steps:
            out = subprocess.run(_cli() + args, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
            outputs.append(out.stdout + out.stderr)
            assert out.returncode == 0, (args[0], outputs[-1][-3000:])
    finally:
        server.stop()
        subprocess.run(_cli() + ["server", "stop"], env=env, capture_output=True, text=True, timeout=120)  # the shared Prefect server these runs started

    # the plugin got its options whole (the redaction is of what is written, not of what runs)
    assert json.loads(log.read_text().splitlines()[0]) == {"api_key_sha256": hashlib.sha256(opt_key.encode()).hexdigest(), "style": visible}
    # no secret in any file written, nor in what the commands printed
    hits = _holding([run_a, run_b, export, home], needles)
    assert not hits, hits
    for text in outputs:
        assert not [w for w, n in needles.items() if n in text], text[-2000:]
    # what is written: the settings, the secret ones redacted (so the search above looked where they would be)
    written = json.loads((run_b / "configs" / "label.json").read_text())["backend"]["options"]
    assert written == {"base_url": server.base_url, "api_key": REDACTED, "auth_token": REDACTED, "style": visible}
    assert json.loads((run_a / "configs" / "label.json").read_text())["backend"]["api_key_env"] == "AIF_TEST_API_KEY"
    card = (export / "README.md").read_text()
    assert visible in card and REDACTED in card
    prefect_files = [p for p in home.rglob("*") if p.is_file() and ".db" in p.name]
    assert prefect_files and any(visible.encode() in p.read_bytes() for p in prefect_files), "the flow-run parameters were not found in Prefect's database"


    # a run written before configs were redacted holds the key in configs/: its export still holds none
    from flows.export import export_run

    path = run_b / "configs" / "label.json"
    old = json.loads(path.read_text())
    old["backend"]["options"]["api_key"] = opt_key
    path.write_text(json.dumps(old))
    export_run(str(run_b), str(tmp_path / "export-old"))
    assert REDACTED in (tmp_path / "export-old" / "README.md").read_text()
    assert not _holding([tmp_path / "export-old"], needles)
