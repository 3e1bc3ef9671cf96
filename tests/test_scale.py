"""Scale-out: the label flow sharded over a local 2-worker Ray cluster gives exactly the sequential and thread runners' labels."""

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


@pytest.mark.slow
def test_ray_shards_give_the_sequential_and_thread_runners_labels(tmp_path):
    pytest.importorskip("ray", reason="the ray extra: pip install 'aifeedback[ray]'")
    pytest.importorskip("prefect_ray", reason="the ray extra: pip install 'aifeedback[ray]'")
    import torch

    from flows.label import run_label

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    ov = {"input": str(src), "batch_size": 2, "backend": {"num_threads": 1}}  # one thread each: bitwise-equal arithmetic
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # the backend may be cached from an earlier test, after threads were restored: set it here too
    try:
        runs = {
            "sequential": run_label(run_dir=str(tmp_path / "sequential"), overrides=ov),  # the default runner
            "threads": run_label(run_dir=str(tmp_path / "threads"), overrides=ov, runner="threads", workers=2),
            "ray": run_label(run_dir=str(tmp_path / "ray"), overrides=ov, runner="ray", workers=2),
        }
    finally:
        torch.set_num_threads(threads_before)  # the in-process backend set one thread for this whole process
    for s in runs.values():
        assert s["complete"] and s["n_in"] == 6 and s["n_out"] == 5 and s["n_excluded"] == 1
        assert s["batches"] == 3 and s["batches_computed"] == 3
    assert runs["sequential"]["worker_processes"] == runs["threads"]["worker_processes"] == 1
    assert runs["ray"]["worker_processes"] >= 2  # the shards really ran in Ray worker processes
    stores = {name: RunStore(tmp_path / name) for name in runs}
    ray = stores["ray"]
    for key in ray.keys("labels"):  # every shard written by its own worker
        assert ray.shard_path("labels", key).is_file()
    rows = {name: sorted(st.read_table("labels").to_pylist(), key=lambda r: r["pair_id"]) for name, st in stores.items()}
    assert len(rows["sequential"]) == 5 and all(0 <= r["p_ab"] <= 1 and 0 <= r["p_ba"] <= 1 for r in rows["sequential"])
    for name in ("threads", "ray"):
        assert stores[name].keys("labels") == stores["sequential"].keys("labels"), name
        assert rows[name] == rows["sequential"], name  # identical values, p_ab and p_ba included
        assert [(r["pair_id"], r["p_ab"], r["p_ba"]) for r in rows[name]] == [(r["pair_id"], r["p_ab"], r["p_ba"]) for r in rows["sequential"]]
        assert stores[name].read_table("labels", excluded=True).to_pylist() == stores["sequential"].read_table("labels", excluded=True).to_pylist(), name


@pytest.mark.slow
def test_an_already_connected_process_refuses_another_ray_address():
    """A process already connected to one cluster must not quietly run on it when `ray_address` names another."""
    ray = pytest.importorskip("ray", reason="the ray extra: pip install 'aifeedback[ray]'")
    from aifeedback.errors import ConfigError
    from aifeedback.stage import Ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        here = ray.get_runtime_context().gcs_address
        with pytest.raises(ConfigError, match=rf"`ray_address` is 127.0.0.1:1, but this process is already connected to the Ray cluster at {here}.*ray_address={here}"):
            Ray(ray_address="127.0.0.1:1").__enter__()
        with Ray(ray_address=here) as r:  # the same cluster: used, and left running (not ours to stop)
            assert r._started is False
        assert ray.is_initialized()
    finally:
        ray.shutdown()
