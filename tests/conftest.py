"""Shared fixtures: Prefect in a temporary home, the embedded backend, a real llama.cpp server."""

from __future__ import annotations

import os
import signal
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
# Commands would otherwise share one background Prefect server (aifeedback/prefect_server.py) that outlives
# the session; the suite keeps one temporary server per process. tests/test_prefect_server.py tests the shared one.
os.environ.setdefault("AIFEEDBACK_PREFECT_SERVER", "temporary")

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


class ServerDied(RuntimeError):
    """A llama.cpp server that died: its exit signal and the tail of its log, once, for every dependent test."""


def _exit_cause(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name} ({-returncode})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class LlamaServer:
    def __init__(self, port: int, proc: subprocess.Popen, log: Path):
        self.port, self.proc, self.log = port, proc, log
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def report(self, when: str) -> str:
        """One message: what happened, the exit cause, the log's tail, and the likely fix."""
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
        rc = self.proc.poll()
        hint = ""
        if rc is not None and rc < 0 and -rc in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS):
            hint = (
                "\nA crash on the first request usually means llama-cpp-python was built for another CPU "
                "(e.g. AMX kernels: ldtilecfg). Rebuild it portably with `bash scripts/setup.sh test` "
                "(scripts/llama-wheel.sh), and check the machine with `aifeedback doctor`."
            )
        return f"llama.cpp server (pid {self.proc.pid}, port {self.port}) died {when}: {_exit_cause(rc)}.\n--- last lines of {self.log} ---\n{tail}{hint}"

    def check(self, when: str = "before this test") -> None:
        if self.proc.poll() is not None:
            raise ServerDied(self.report(when))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_llama_server(tmp_dir: Path, api_key: str | None = None, after_first_answer=None) -> LlamaServer:
    """Start `llama_cpp.server` on the embedded GGUF and make one real completion before returning it.

    `/v1/models` answering proves little: a wheel built for another CPU answers it and then dies on
    the first completion. So the server is only handed out after a chat completion with log-probs has
    come back; a server that dies on the way raises ServerDied with its exit signal and log tail.
    `after_first_answer(server)` runs between the two (the crash test kills the server there).
    """
    pytest.importorskip("llama_cpp", reason="the tests' llama.cpp server is installed by `bash scripts/setup.sh test`")
    import httpx

    from aifeedback.models import smollm2_gguf

    port = free_port()
    log = tmp_dir / f"llama-server-{port}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    if api_key:
        cmd += ["--api_key", api_key]  # the server then answers 401 to any other key
    fh = open(log, "w")
    server = LlamaServer(port, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), log)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.time() + 120
    while True:
        server.check("while starting")
        if time.time() > deadline:
            server.stop()
            raise ServerDied(server.report("after not answering /v1/models for 120 s"))
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2, headers=headers).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    if after_first_answer is not None:
        after_first_answer(server)
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "logprobs": True, "top_logprobs": 2, "temperature": 0}
    try:
        r = httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=120)
        r.raise_for_status()
        if not r.json()["choices"][0]["logprobs"]:
            raise RuntimeError(f"the warm-up completion returned no log-probs: {r.text[:300]}")
    except (httpx.HTTPError, KeyError, ValueError, RuntimeError) as e:
        time.sleep(0.5)  # let a dying process finish dying, so its signal is known
        if server.proc.poll() is not None:
            raise ServerDied(server.report(f"on its first completion request ({type(e).__name__}: {e})")) from None
        server.stop()
        raise ServerDied(server.report(f"after a failed first completion ({type(e).__name__}: {e})")) from None
    return server


@pytest.fixture(scope="session")
def _llama_server_session(tmp_path_factory):
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


@pytest.fixture
def llama_server(_llama_server_session):
    """The session's server, checked alive before and after each test, so a crash is named as a crash."""
    _llama_server_session.check("before this test")
    yield _llama_server_session
    _llama_server_session.check("during this test")


def train_tiny_rm(path: Path, seed: int = 0, length_head: bool = False) -> Path:
    """A tiny BERT reward model trained a few steps (prefers the longer, kinder answer) and saved as `aifeedback train-rm` saves it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aifeedback.models import minilm_dir
    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2 if length_head else 1, max_position_embeddings=128))
    rows = [
        {"pair_id": str(i), "messages": [{"role": "user", "content": f"q {i}"}], "response_a": "Sure, a kind and full answer." if i % 2 else "No.", "response_b": "No." if i % 2 else "Sure, a kind and full answer.", "p_a": 1.0 if i % 2 else 0.0, "human": "A" if i % 2 else "B"}
        for i in range(16)
    ]
    tr = RewardTrainer(RewardConfig(epochs=2, lr=1e-3, batch_size=8, max_length=64, seed=seed, length_head=length_head), model, tok)
    return tr.save(path, tr.train(rows))


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory):
    """`tiny_rm(seed, length_head=False)`: the folder of a tiny reward model, trained once per pytest session per
    (seed, length_head). Tests only read it (label, score, fit T); a test that trains must train its own."""
    made: dict[tuple[int, bool], Path] = {}

    def get(seed: int = 0, length_head: bool = False) -> Path:
        if (seed, length_head) not in made:
            made[seed, length_head] = train_tiny_rm(tmp_path_factory.mktemp(f"tiny-rm-{seed}-{int(length_head)}") / "rm", seed, length_head)
        return made[seed, length_head]

    return get


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared human-preference data not present at {SHARED_DATA}")
    return SHARED_DATA


# Fixtures that load the embedded model or start a server: a test that uses one is `slow` whatever its module says.
SLOW_FIXTURES = {"embedded_backend", "llama_server", "_llama_server_session"}
# A test that is not marked `slow` and takes longer than this is named at the end, so `-m "not slow"` stays fast.
UNMARKED_SLOW_S = 10.0
_unmarked_slow: list[tuple[str, float]] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure (a skipped test hides what it would have found), except the GPU tests."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.passed and "slow" not in item.keywords and rep.duration > UNMARKED_SLOW_S:
        _unmarked_slow.append((item.nodeid, rep.duration))
    if rep.skipped and _in_ci() and "gpu" not in item.keywords and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, which counts as a failure (only GPU tests may skip): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (importorskip) fails under CI=true too."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and "test_gpu" not in report.nodeid:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true, which counts as a failure: {reason}"


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section("tests over %.0f s without the slow marker (mark them, or make them fast)" % UNMARKED_SLOW_S)
        for nodeid, d in sorted(_unmarked_slow, key=lambda x: -x[1]):
            terminalreporter.write_line(f"{d:7.1f} s  {nodeid}")


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
