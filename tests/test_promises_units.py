"""Promises checked without a model: base_url credentials are refused; a purely position-biased labeler gives a tie.

The labeler test uses a scripted backend, as the house rules allow for unit tests of a
labeler's aggregation: it shows exactly what a judge that always picks the first-shown
response turns into.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aifeedback.backends.base import BackendStats, Capabilities, ChoiceResult, ScoringPrompt
from aifeedback.config import BackendConfig, LabelConfig, build_config
from aifeedback.errors import ConfigError

from conftest import REPO

SECRET = "s3cretPW-7f3a"
CREDENTIAL_URLS = [
    f"http://user:{SECRET}@127.0.0.1:8000/v1",  # user and password
    f"http://{SECRET}@127.0.0.1:8000/v1",  # a token as the user name
    f"http://127.0.0.1:8000/v1?api_key={SECRET}",
    f"https://api.example.invalid/v1?token={SECRET}",
    f"https://api.example.invalid/v1?x=1&Password={SECRET}",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_base_url_with_credentials_is_refused_with_the_fix(url):
    with pytest.raises(ConfigError, match=r"base_url must not carry credentials.*environment variable named by backend\.api_key_env"):
        build_config(LabelConfig, overrides={"backend": {"kind": "openai", "base_url": url}})
    cfg = BackendConfig(kind="openai", base_url="http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="must not carry credentials"):  # assignment is validated too
        cfg.base_url = url
    assert cfg.base_url == "http://127.0.0.1:8000/v1"


def test_base_url_without_credentials_is_kept():
    cfg = build_config(LabelConfig, overrides={"backend": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1/?stream=1"}})
    assert cfg.backend.base_url == "http://127.0.0.1:8000/v1/?stream=1"
    assert build_config(LabelConfig, overrides={"backend": {"kind": "openai", "base_url": "https://host.example/v1/"}}).backend.base_url == "https://host.example/v1"


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_refusal_does_not_echo_the_credentials(url):
    with pytest.raises(ConfigError) as err:
        build_config(LabelConfig, overrides={"backend": {"kind": "openai", "base_url": url}})
    assert "must not carry credentials" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.fixture(scope="module")
def refused_cli_run(tmp_path_factory):
    """`aifeedback label --base-url URL-WITH-PASSWORD` once, with its own Prefect home and run directory."""
    base = tmp_path_factory.mktemp("credentials")
    env = {**os.environ, "PREFECT_HOME": str(base / "prefect-home"), "COLUMNS": "1000"}
    env.pop("PREFECT_API_URL", None)
    run = base / "run"
    cmd = [sys.executable, "-m", "flows.cli", "label", "--run-dir", str(run), "--backend", "openai", "--base-url", f"http://user:{SECRET}@127.0.0.1:9/v1", "--model", "m"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    return proc, base


def test_cli_refuses_credentials_in_base_url(refused_cli_run):
    proc, base = refused_cli_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "invalid LabelConfig" in errors[0], out
    assert "must not carry credentials" in out and "Traceback" not in out
    assert not (base / "run" / "configs").exists()  # no config was written with the URL in it


def test_cli_refusal_leaks_no_credentials(refused_cli_run):
    """Not printed, and not stored: not in the run directory, nor in Prefect's database (flow parameters, failure messages)."""
    proc, base = refused_cli_run
    assert proc.returncode == 2 and "must not carry credentials" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    files = [p for p in base.rglob("*") if p.is_file()]  # Prefect's home and the run directory, if anything was written
    assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []


# -- a purely position-biased labeler ---------------------------------------------------------------


class FirstShownBackend:
    """Scripted: every scoring prompt puts all probability on the first candidate ("1": the response shown first)."""

    name = "scripted"
    model_id = "scripted/first-shown"
    tokenizer = None  # no exact token counts: the labeler estimates lengths

    def __init__(self, favour: int = 0):
        self.favour = favour
        self.capabilities = Capabilities(logprobs=True, prefix_reuse=False, in_process=True, token_counts_exact=False)
        self.stats = BackendStats()
        self.prompts: list[ScoringPrompt] = []

    def generate(self, chats, params, seeds=None):
        raise AssertionError("the labeler must not generate without cot")

    def choice_probs(self, prompts, candidates):
        self.prompts += prompts
        probs = [1.0 if k == self.favour else 0.0 for k in range(len(candidates))]
        return [ChoiceResult(list(probs), [0.0 if k == self.favour else None for k in range(len(candidates))], "logprobs") for _ in prompts]

    def close(self):
        pass


@pytest.mark.parametrize("favour, position", [(0, "first"), (1, "second")])
def test_a_purely_position_biased_labeler_gives_a_tie(favour, position):
    from labelers.job import LabelJob
    from labelers.labeler import Labeler

    cfg = LabelConfig()
    job = LabelJob(cfg)
    backend = FirstShownBackend(favour)
    lab = Labeler(backend, cfg, job.template, None)
    pair = {"pair_id": "x", "prompt_id": "p", "messages": [{"role": "user", "content": "Name a yellow fruit."}], "response_a": "RESPONSE-ALPHA", "response_b": "RESPONSE-BETA"}
    rows, excluded = lab.label([pair], "k", backend.model_id, None)
    assert excluded == [] and len(rows) == 1
    stored = rows[0]
    first = [1.0, 0.0] if favour == 0 else [0.0, 1.0]
    assert [(e["order"], e["probs"]) for e in stored["option_probs"]] == [("AB", first), ("BA", first)]
    r = stored  # with the derived columns, under the config's tie_margin
    # both orders were really shown: A first, then B first
    assert len(backend.prompts) == 2 and r["orders"] == ["AB", "BA"]
    shown = [p.messages[-1]["content"] for p in backend.prompts]
    assert shown[0].index("RESPONSE-ALPHA") < shown[0].index("RESPONSE-BETA")
    assert shown[1].index("RESPONSE-BETA") < shown[1].index("RESPONSE-ALPHA")
    # A wins when shown first and loses when shown second (or the reverse): pure position, no preference
    assert (r["p_ab"], r["p_ba"]) == ((1.0, 0.0) if favour == 0 else (0.0, 1.0))
    assert r["p_a"] == 0.5 and r["confidence"] == 0.0
    assert r["hard_label"] == "tie"
    assert r["consistent"] is False and r["position_preferred"] == position
