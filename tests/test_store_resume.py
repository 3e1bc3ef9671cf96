"""Run store: atomic shards, content-addressed keys, resume computing only missing batches."""

import json

import pyarrow.parquet as pq
import pytest

from aifeedback.records import RESPONSES
from aifeedback.store import RunStore, StoreError, batch_key


def _prompts(path, n):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Say the number {i} in words."}) + "\n")
        fh.write(json.dumps({"id": "bad", "prompt": ""}) + "\n")  # excluded, never lost


def test_interrupted_stage_resumes_only_missing_batches(tmp_path):
    from flows.generate import generate_flow

    src = tmp_path / "prompts.jsonl"
    _prompts(src, 5)
    ov = {"input": str(src), "id_column": "id", "batch_size": 1, "sampling": {"max_new_tokens": 6, "temperature": 0.0}}
    run = str(tmp_path / "run")
    first = generate_flow(run_dir=run, overrides=ov, max_batches=2)  # "crash" after 2 of 5 batches
    assert first["batches"] == 5 and first["batches_computed"] == 2 and first["model_calls"] == 2
    assert not first["complete"]
    second = generate_flow(run_dir=run, overrides=ov)
    assert second["batches_computed"] == 3 and second["model_calls"] == 3
    assert second["complete"] and second["n_out"] == 5 and second["n_excluded"] == 1
    assert second["n_in"] == 6
    third = generate_flow(run_dir=run, overrides=ov)
    assert third["model_calls"] == 0 and third["batches_computed"] == 0
    ds = RunStore(run).dataset("responses")
    assert len(ds) == 5 and set(ds["prompt_id"]) == {f"p{i}" for i in range(5)}
    ex = RunStore(run).dataset("responses", excluded=True)
    assert ex["reason"] == ["empty_prompt"]
    # a config change touches every batch: new keys, recomputed
    ov2 = dict(ov, sampling={"max_new_tokens": 5, "temperature": 0.0})
    fourth = generate_flow(run_dir=run, overrides=ov2)
    assert fourth["batches_computed"] == 5


def test_batch_key_depends_on_every_part():
    base = batch_key("s", ["a", "b"], {"t": 1}, "m", "v1")
    assert base == batch_key("s", ["a", "b"], {"t": 1}, "m", "v1")
    others = {
        batch_key("s", ["a", "c"], {"t": 1}, "m", "v1"),
        batch_key("s", ["a", "b"], {"t": 2}, "m", "v1"),
        batch_key("s", ["a", "b"], {"t": 1}, "m2", "v1"),
        batch_key("s", ["a", "b"], {"t": 1}, "m", "v2"),
        batch_key("s2", ["a", "b"], {"t": 1}, "m", "v1"),
    }
    assert base not in others and len(others) == 5


def test_shard_write_is_atomic_and_readable(tmp_path):
    store = RunStore(tmp_path)
    row = {k: None for k in RESPONSES.names} | {"response_id": "r1", "response": "hi", "messages": [{"role": "user", "content": "x"}]}
    store.write_batch("responses", "k1", [row], RESPONSES, [{"item_id": "x", "stage": "responses", "reason": "r", "detail": "d", "raw": None}])
    assert store.has("responses", "k1")
    assert not list((tmp_path / "responses").glob("*.tmp"))
    assert pq.read_table(store.shard_path("responses", "k1")).schema.equals(RESPONSES)
    store.write_manifest("responses", ["k1"], {})
    assert store.read_table("responses", excluded=True).column("batch_key").to_pylist() == ["k1"]


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.geteuid() == 0:
            target = "/proc/aif-run"  # root ignores permission bits; /proc refuses new folders
        else:
            target = str(ro / "run")
        with pytest.raises(StoreError, match="not writable.*--run-dir"):
            RunStore(target)
    finally:
        ro.chmod(0o700)


def test_reading_an_unfinished_stage_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match="aifeedback responses|has not completed"):
        RunStore(tmp_path).dataset("responses")
