"""Revision resumes after kill -9: finished shards are reused untouched, and the rows equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from aifeedback.store import RunStore

from conftest import REPO
from test_reliability import _cli

pytestmark = pytest.mark.slow  # the embedded model in child processes, killed and resumed

PROMPTS = [
    "How do I pick a lock on my neighbour's door?",
    "Name a yellow fruit.",
    "What is 2+2?",
    "How can I get back at a coworker?",
    "Give one tip for sleeping well.",
    "Is the sun a star?",
    "Write a rude reply to my landlord.",
    "What colour is the sky on a clear day?",
]
# one thread: the killed CLI, its resumption and the in-process reference do bitwise-equal arithmetic
REVISE = {"rounds": 1, "few_shot": False, "batch_size": 1, "sampling": {"max_new_tokens": 12}, "backend": {"num_threads": 1}}


def _done(run) -> dict[str, tuple[int, int]]:
    """Finished revision batches (KEY.parquet marks one done) and their exclusion files: name -> (inode, mtime)."""
    d = run / "revisions"
    if not d.is_dir():
        return {}
    done = {p.name for p in d.glob("*.parquet") if not p.name.endswith(".excluded.parquet") and not p.name.startswith("_")}
    keep = done | {n.replace(".parquet", ".excluded.parquet") for n in done}
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("*.parquet") if p.name in keep}


def _n_done(stamps: dict) -> int:
    return len([n for n in stamps if not n.endswith(".excluded.parquet")])


def test_revise_killed_after_its_first_shard_resumes_and_matches_an_uninterrupted_run(tmp_path):
    import torch

    from flows.generate import run_generate
    from flows.revise import run_revise

    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    run, ref = tmp_path / "run", tmp_path / "ref"
    g = run_generate(run_dir=str(run), overrides={"input": str(src), "id_column": "id", "sampling": {"n": 1, "max_new_tokens": 8}})
    assert g["complete"] and g["n_out"] == len(PROMPTS)
    shutil.copytree(run, ref)  # the same responses for the uninterrupted reference

    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), COLUMNS="200")
    env.pop("PREFECT_API_URL", None)
    sets = ["rounds=1", "few_shot=false", "batch_size=1", "sampling.max_new_tokens=12", "backend.num_threads=1"]
    cmd = _cli() + ["revise", "--run-dir", str(run), "--constitution", "harmless"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _n_done(_done(run)) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the revise run ended before its first shard could be seen; use more prompts"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, Prefect's temporary server, everything
    proc.wait(timeout=30)
    before = _done(run)
    n_done = _n_done(before)
    assert 1 <= n_done < len(PROMPTS), n_done
    assert not (run / "revisions" / "_manifest.json").exists()  # the killed invocation never completed the stage

    final = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    after = _done(run)
    for name, stamp in before.items():  # finished shards are reused as they are, never rewritten
        assert after[name] == stamp, name
    store = RunStore(run)
    last = store.history()[-1]
    assert last["stage"] == "revisions" and last["complete"]
    assert last["n_in"] == len(PROMPTS) == last["n_out"] + last["n_excluded"]
    assert last["batches_computed"] == len(PROMPTS) - n_done  # only what the kill left undone
    assert last["model_calls"] == 2 * (len(PROMPTS) - n_done)  # one critique and one revision call per batch
    rows = sorted(store.read_table("revisions").to_pylist(), key=lambda r: r["response_id"])
    assert len({r["response_id"] for r in rows}) == len(rows) == last["n_out"]

    threads_before = torch.get_num_threads()
    try:
        want = run_revise(run_dir=str(ref), overrides={**REVISE, "constitution": "harmless"})
    finally:
        torch.set_num_threads(threads_before)
    assert want["complete"] and want["batches_computed"] == len(PROMPTS)
    ref_rows = sorted(RunStore(ref).read_table("revisions").to_pylist(), key=lambda r: r["response_id"])
    assert rows == ref_rows  # chains, final revisions, seeds and provenance: item by item
    assert RunStore(run).read_table("revisions", excluded=True).to_pylist() == RunStore(ref).read_table("revisions", excluded=True).to_pylist()
