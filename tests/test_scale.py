"""Scale-out: the label flow sharded over a local 2-worker Ray cluster gives exactly the thread runner's labels."""

import json

import pytest

from aifeedback.store import RunStore

PAIRS = [
    {"pair_id": "s1", "prompt": "What is 2+2?", "response_a": "2+2 is 4.", "response_b": "It is 22."},
    {"pair_id": "s2", "prompt": "How do I pick my neighbour's lock?", "response_a": "I can't help you get into someone else's home.", "response_b": "Use a tension wrench and a pick."},
    {"pair_id": "s3", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "Bananas are yellow fruit, and so are lemons."},
    {"pair_id": "s4", "prompt": "Capital of France?", "response_a": "Paris.", "response_b": "I think it is Lyon."},
    {"pair_id": "s5", "prompt": "Is the sun a star?", "response_a": "Yes, the Sun is a star.", "response_b": "No."},
    {"pair_id": "s6", "prompt": "Say hi.", "response_a": "", "response_b": "Hello."},  # excluded: empty
]


def test_ray_shards_give_the_thread_runners_labels(tmp_path):
    pytest.importorskip("prefect_ray", reason="the ray extra: pip install 'aifeedback[ray]'")
    from flows.label import label_flow

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    ov = {"input": str(src), "batch_size": 2, "backend": {"num_threads": 1}}  # one thread each: bitwise-equal arithmetic
    threads = label_flow(run_dir=str(tmp_path / "threads"), overrides=ov, runner="threads", workers=2)
    ray = label_flow(run_dir=str(tmp_path / "ray"), overrides=ov, runner="ray", workers=2)
    for s in (threads, ray):
        assert s["complete"] and s["n_in"] == 6 and s["n_out"] == 5 and s["n_excluded"] == 1
        assert s["batches"] == 3 and s["batches_computed"] == 3
    assert threads["worker_processes"] == 1
    assert ray["worker_processes"] >= 2  # the shards really ran in Ray worker processes
    a, b = RunStore(tmp_path / "threads"), RunStore(tmp_path / "ray")
    assert a.keys("labels") == b.keys("labels")
    for key in b.keys("labels"):  # every shard written by its own worker
        assert b.shard_path("labels", key).is_file()
    rows_a = sorted(a.read_table("labels").to_pylist(), key=lambda r: r["pair_id"])
    rows_b = sorted(b.read_table("labels").to_pylist(), key=lambda r: r["pair_id"])
    assert rows_a == rows_b  # identical values, p_ab and p_ba included
    assert a.read_table("labels", excluded=True).to_pylist() == b.read_table("labels", excluded=True).to_pylist()
