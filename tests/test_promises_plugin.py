"""A backend of your own: `aifeedback label --set backend.kind=package.module:Class` builds the class from the config.

`WrappedEmbedded` below is such a plugin: it wraps the embedded transformers backend and
notes each call in the file named by $AIF_PLUGIN_LOG, so the test can see that the CLI
really went through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aifeedback.store import RunStore

from conftest import REPO

KIND = "test_promises_plugin:WrappedEmbedded"
PAIRS = [
    {"pair_id": "g1", "prompt": "What is 2+2?", "response_a": "2+2 is 4.", "response_b": "It is 22."},
    {"pair_id": "g2", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "Blue."},
    {"pair_id": "g3", "prompt": "Capital of France?", "response_a": "Paris.", "response_b": "I think it is Lyon."},
    {"pair_id": "g4", "prompt": "Say hi.", "response_a": "Hi!", "response_b": "Hi!"},  # identical: excluded before the backend
]


class WrappedEmbedded:
    """A plugin backend: takes the BackendConfig, implements the protocol by delegating to the embedded model."""

    name = "wrapped-embedded"

    def __init__(self, cfg):
        from aifeedback.backends.transformers import TransformersBackend
        from aifeedback.config import BackendConfig

        self.inner = TransformersBackend(BackendConfig(kind="transformers", model=cfg.model, max_context=cfg.max_context))
        self.model_id = cfg.model
        self._note({"event": "init", "kind": cfg.kind})

    def __getattr__(self, name: str):
        """Everything else of the protocol (capabilities, stats, tokenizer...) is the wrapped backend's."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _note(self, entry: dict) -> None:
        path = os.environ.get("AIF_PLUGIN_LOG")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({**entry, "pid": os.getpid()}) + "\n")

    def generate(self, chats, params, seeds=None):
        self._note({"event": "generate", "n": len(chats)})
        return self.inner.generate(chats, params, seeds)

    def choice_probs(self, prompts, candidates):
        self._note({"event": "choice_probs", "n": len(prompts), "candidates": list(candidates)})
        return self.inner.choice_probs(prompts, candidates)

    def close(self) -> None:
        self.inner.close()


def test_label_cli_with_a_plugin_backend_class(tmp_path):
    from flows.label import run_label

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    log = tmp_path / "plugin.log"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), COLUMNS="200", AIF_PLUGIN_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PREFECT_API_URL", None)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli", "label", "--run-dir", str(run), "--input", str(src), "--set", f"backend.kind={KIND}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0]["event"] == "init" and calls[0]["kind"] == KIND and calls[0]["pid"] != os.getpid()
    scored = [c for c in calls if c["event"] == "choice_probs"]
    assert sum(c["n"] for c in scored) == 2 * 3 and all(c["candidates"] == ["1", "2"] for c in scored)  # 3 pairs, both orders

    store = RunStore(run)
    rows = sorted(store.read_table("labels").to_pylist(), key=lambda r: r["pair_id"])
    assert [r["pair_id"] for r in rows] == ["g1", "g2", "g3"] and all(r["backend"] == KIND for r in rows)
    assert store.read_table("labels", excluded=True).column("reason").to_pylist() == ["identical_responses"]
    assert json.loads((run / "configs" / "label.json").read_text())["backend"]["kind"] == KIND

    # the plugin changes how the model is called, not what it says: the built-in backend gives the same labels
    ref = run_label(run_dir=str(tmp_path / "ref"), overrides={"input": str(src)})
    assert ref["complete"]
    want = sorted(RunStore(tmp_path / "ref").read_table("labels").to_pylist(), key=lambda r: r["pair_id"])
    assert [r["pair_id"] for r in want] == ["g1", "g2", "g3"]
    for got, exp in zip(rows, want):
        assert (got["p_ab"], got["p_ba"]) == pytest.approx((exp["p_ab"], exp["p_ba"]), abs=1e-5)
