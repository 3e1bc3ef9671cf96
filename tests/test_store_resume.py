"""Run store: atomic shards, content-addressed keys, resume computing only missing batches."""

import json

import pyarrow.parquet as pq
import pytest

from aifeedback.errors import StoreError
from aifeedback.records import RESPONSES
from aifeedback.store import RunStore, batch_key


def _prompts(path, n):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Say the number {i} in words."}) + "\n")
        fh.write(json.dumps({"id": "bad", "prompt": ""}) + "\n")  # excluded, never lost


def test_interrupted_stage_resumes_only_missing_batches(tmp_path):
    from flows.generate import run_generate

    src = tmp_path / "prompts.jsonl"
    _prompts(src, 5)
    ov = {"input": str(src), "id_column": "id", "batch_size": 1, "sampling": {"max_new_tokens": 6, "temperature": 0.0}}
    run = str(tmp_path / "run")
    first = run_generate(run_dir=run, overrides=ov, max_batches=2)  # "crash" after 2 of 5 batches
    assert first["batches"] == 5 and first["batches_computed"] == 2 and first["model_calls"] == 2
    assert not first["complete"]
    second = run_generate(run_dir=run, overrides=ov)
    assert second["batches_computed"] == 3 and second["model_calls"] == 3
    assert second["complete"] and second["n_out"] == 5 and second["n_excluded"] == 1
    assert second["n_in"] == 6
    third = run_generate(run_dir=run, overrides=ov)
    assert third["model_calls"] == 0 and third["batches_computed"] == 0
    ds = RunStore(run).dataset("responses")
    assert len(ds) == 5 and set(ds["prompt_id"]) == {f"p{i}" for i in range(5)}
    ex = RunStore(run).dataset("responses", excluded=True)
    assert ex["reason"] == ["empty_prompt"]
    # a config change touches every batch: new keys, recomputed
    ov2 = dict(ov, sampling={"max_new_tokens": 5, "temperature": 0.0})
    fourth = run_generate(run_dir=run, overrides=ov2)
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


class _EchoJob:
    """A stage job without a model, for the run store's item-level bookkeeping (one row per item)."""

    stage = "responses"
    schema = RESPONSES

    def item_id(self, it):
        return it["prompt_id"]

    def key_config(self):
        return {"v": 1}

    def model_id(self):
        return "none"

    def template_version(self):
        return ""

    def compute(self, items, key):
        return [{"__item__": it["prompt_id"], "response_id": f"{it['prompt_id']}-r", "prompt_id": it["prompt_id"], "response": "r", "batch_key": key} for it in items], [], {}


def test_item_level_reuse_reads_back_exactly_each_invocations_items(tmp_path):
    """Subsets, supersets and reorderings across shards: each invocation reads exactly its items, counts match,
    and the selection file of a partial invocation is never mistaken for a shard by the next one."""
    from aifeedback.batches import Reuse, iter_batches, run_batch
    from aifeedback.stage import _count

    store, job = RunStore(tmp_path / "run"), _EchoJob()

    def run(ids, batch_size):
        reuse = Reuse(*store.item_index("responses"))
        new = [b for b in iter_batches(store, job, [{"prompt_id": i} for i in ids], batch_size, reuse)]
        for b in new:
            run_batch(str(store.root), job, b)
        keys = list(dict.fromkeys(reuse.order))
        counts = _count(store, "responses", keys, reuse.selection())
        store.write_manifest("responses", keys, {}, selection=reuse.selection())
        got = sorted(r["prompt_id"] for r in store.read_table("responses").to_pylist())
        return got, counts, len(new)

    assert run(list("abcd"), 2) == (list("abcd"), (4, 0), 2)
    assert run(list("ac"), 2) == (list("ac"), (2, 0), 0)  # two shards used in part
    assert any(p.name.startswith("_selection-") for p in (store.root / "responses").iterdir())
    assert run(list("ace"), 2) == (list("ace"), (3, 0), 1)  # only e is new; the selection file is not a shard
    assert run(list("abcde"), 3) == (list("abcde"), (5, 0), 0)  # another batch size: nothing recomputed
    assert not any(p.name.startswith("_selection-") for p in (store.root / "responses").iterdir())  # stale selections removed
    assert run(list("edcba"), 1) == (list("abcde"), (5, 0), 0)


def test_items_the_backend_failed_on_are_tried_again_and_counted_once(tmp_path):
    """A backend_error exclusion is not a verdict on the item: the next run computes it again, and the old exclusion is not read."""
    from aifeedback.records import exclusion
    from aifeedback.batches import Reuse, iter_batches, run_batch
    from aifeedback.stage import _count

    class Flaky(_EchoJob):
        failed = False

        def compute(self, items, key):
            rows, _, stats = super().compute(items, key)
            if not Flaky.failed:  # the first call: the endpoint fails on item b
                Flaky.failed = True
                return [r for r in rows if r["prompt_id"] != "b"], [exclusion("b", "responses", "backend_error", "HTTP 503 after 5 retries")], stats
            return rows, [], stats

    store, job = RunStore(tmp_path / "run"), Flaky()

    def run():
        reuse = Reuse(*store.item_index("responses"))
        new = list(iter_batches(store, job, [{"prompt_id": i} for i in "abc"], 3, reuse))
        for b in new:
            run_batch(str(store.root), job, b)
        keys = list(dict.fromkeys(reuse.order))
        counts = _count(store, "responses", keys, reuse.selection())
        store.write_manifest("responses", keys, {}, selection=reuse.selection())
        return counts, sum(len(b.items) for b in new)

    assert run() == ((2, 1), 3)
    assert run() == ((3, 0), 1)  # only b is computed again
    assert sorted(r["prompt_id"] for r in store.read_table("responses").to_pylist()) == ["a", "b", "c"]
    assert store.read_table("responses", excluded=True).num_rows == 0
    assert run() == ((3, 0), 0)
