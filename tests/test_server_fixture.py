"""The llama.cpp server fixture fails fast and says why: a real crash, made by killing the server after its first answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ServerDied, start_llama_server

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def _segfault(server) -> None:
    """What a wheel built for another CPU does: answer /v1/models, then die of a signal on the first completion."""
    os.kill(server.proc.pid, signal.SIGSEGV)


def test_a_server_that_dies_on_its_first_completion_is_named_with_its_signal_and_log(tmp_path):
    with pytest.raises(ServerDied) as err:
        start_llama_server(tmp_path, after_first_answer=_segfault)
    msg = str(err.value)
    print(msg)
    assert "died on its first completion request" in msg
    assert "killed by signal SIGSEGV (11)" in msg
    assert "--- last lines of" in msg and "GET /v1/models" in msg  # the log's tail, ending where the server did
    assert "scripts/setup.sh test" in msg  # the fix


def test_a_server_that_dies_between_tests_is_named_before_the_next_one(tmp_path):
    server = start_llama_server(tmp_path)  # one real completion already answered
    try:
        server.check()
        server.proc.send_signal(signal.SIGSEGV)
        server.proc.wait(timeout=30)
        with pytest.raises(ServerDied, match=r"died before this test: killed by signal SIGSEGV"):
            server.check()
    finally:
        server.stop()


def test_every_dependent_test_errors_on_the_one_cause(tmp_path):
    """An inner pytest session whose server dies on its first completion: both tests error, once each, on that crash."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f'''
        import importlib.util, os, signal, sys
        import pytest
        sys.path.insert(0, {str(TESTS)!r})
        spec = importlib.util.spec_from_file_location("aif_conftest", {str(TESTS / "conftest.py")!r})
        aif = importlib.util.module_from_spec(spec); spec.loader.exec_module(aif)
        STARTS = []

        @pytest.fixture(scope="session")
        def _llama_server_session(tmp_path_factory):
            STARTS.append(1)
            s = aif.start_llama_server(tmp_path_factory.mktemp("llama"), after_first_answer=lambda s: os.kill(s.proc.pid, signal.SIGSEGV))
            yield s
            s.stop()

        llama_server = aif.llama_server

        def pytest_sessionfinish(session):
            print(f"\\nserver starts: {{len(STARTS)}}")
    '''))
    (tmp_path / "test_inner.py").write_text("def test_one(llama_server):\n    pass\n\ndef test_two(llama_server):\n    pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "2 errors" in text, text
    assert text.count("ERROR at setup of test_one") == 1 and text.count("ERROR at setup of test_two") == 1, text
    assert text.count("killed by signal SIGSEGV") >= 2, text
    assert "server starts: 1" in text, text  # the crash was met once and reported for each dependent test
