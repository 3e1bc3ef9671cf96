"""Ray at a cluster address: the label stage on a real two-node cluster started with the Ray CLI.

``runner="ray"`` with ``ray_address`` promises that the batches run on the cluster at
that address (left running afterwards) and give the sequential runner's labels. Here
the venv's ``ray start`` starts a head and a second node on this machine, one CPU each,
with token authentication (what ``ray start --head`` turns on by default), their own
temp dir and ports, so nothing is shared with ``~/.ray``, ``/tmp/ray`` or the local
cluster of tests/test_scale.py. A driver process runs the stage through
``aifeedback.stage.Ray`` at that address and then with the sequential runner, and
Ray's state API (``ray list tasks``) says which node and worker ran each batch.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RAY = Path(sys.executable).with_name("ray")
PAIRS = [
    {"pair_id": "c1", "prompt": "What is 2+2?", "response_a": "2+2 is 4.", "response_b": "It is 22."},
    {"pair_id": "c2", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "Bananas are yellow fruit, and so are lemons."},
    {"pair_id": "c3", "prompt": "Capital of France?", "response_a": "Paris.", "response_b": "I think it is Lyon."},
    {"pair_id": "c4", "prompt": "Is the sun a star?", "response_a": "Yes, the Sun is a star.", "response_b": "No."},
    {"pair_id": "c5", "prompt": "Say hello.", "response_a": "Hello!", "response_b": "Go away."},
    {"pair_id": "c6", "prompt": "Say hi.", "response_a": "", "response_b": "Hello."},  # excluded: empty
]

# The driver: the label stage through the Ray submitter at the cluster's address, then in process.
DRIVER = r"""
import json, sys
import torch
from aifeedback.config import LabelConfig, build_config
from aifeedback.stage import make_submitter
from aifeedback.store import RunStore
from labelers.stage import build_label_stage

args = json.loads(sys.argv[1])
torch.set_num_threads(1)  # one thread everywhere (Ray workers get one per CPU): bitwise-equal arithmetic
cfg = build_config(LabelConfig, None, {"input": args["pairs"], "batch_size": 2, "backend": {"num_threads": 1}})
out = {}
for runner in ("ray", "sequential"):
    store = RunStore(args["runs"] + "/" + runner)
    sub = make_submitter(runner, ray_address=args["address"] if runner == "ray" else None)
    out[runner] = build_label_stage(store, cfg).run(store, submitter=sub, show_progress=False)
    if runner == "ray":
        import ray
        out["connected_after"] = ray.is_initialized()  # a cluster it did not start is left running, still connected
        if out["connected_after"]:
            ctx = ray.get_runtime_context()
            out["job_id"], out["gcs_address"] = ctx.get_job_id(), ctx.gcs_address
            out["alive_nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
print("DRIVER-RESULT " + json.dumps(out))
"""


class Cluster:
    """A head and a second node on this machine, each a ``ray start --block`` in its own session."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="aifray-", dir="/tmp" if os.path.isdir("/tmp") else None))  # short: Ray's socket paths live here
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
        self.port, self.dashboard_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [f"--{p}-port={free_port()}" for p in ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")]
        cmd = [str(RAY), "start", *args, "--num-cpus=1", f"--object-store-memory={100 * 2**20}", "--disable-usage-stats", "--block", f"--temp-dir={self.tmp}", *ports]
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def ray(self, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(RAY), *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def alive_nodes(self) -> list[str]:
        """The node ids ``ray status`` lists as active (the autoscaler's view, from the GCS)."""
        out = self.ray("status", f"--address={self.address}").stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        return sorted(re.findall(r"\bnode_([0-9a-f]+)", active))

    def tasks(self, job_id: str, until, wait: float = 30) -> list[dict]:
        """The job's tasks as Ray's state API lists them (task events reach the GCS within seconds: poll)."""
        deadline = time.time() + wait
        while True:
            listed = self.ray("list", "tasks", f"--address=http://127.0.0.1:{self.dashboard_port}", "--filter", f"job_id={job_id}", "--format=json", "--detail", "--limit=1000")
            assert listed.returncode == 0, listed.stderr[-3000:]
            tasks = [t for t in json.loads(listed.stdout) if t["type"] == "NORMAL_TASK"]
            if until(tasks) or time.time() > deadline:
                return tasks
            time.sleep(1)

    def start(self) -> None:
        head = self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"])
        address_file = self.tmp / "ray_current_cluster"  # written by `ray start --head` into its own temp dir
        deadline = time.time() + 120
        while not address_file.is_file() or not address_file.read_text().strip():
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Ray head did not start (exit {head.poll()}):\n{self._log('head')}")
            time.sleep(0.5)
        self.address = address_file.read_text().strip()
        assert self.address.endswith(f":{self.port}"), self.address
        node = self._start("node", [f"--address={self.address}"])
        while len(self.alive_nodes()) < 2:
            for name, p in (("head", head), ("node", node)):
                if p.poll() is not None:
                    raise RuntimeError(f"the Ray {name} exited with {p.returncode}:\n{self._log(name)}")
            if time.time() > deadline:
                raise RuntimeError(f"the cluster never showed 2 alive nodes:\n{self.ray('status', f'--address={self.address}').stdout}")
            time.sleep(1)

    def stop(self) -> list[str]:
        """Stop every process of the two sessions (not `ray stop`: that would end any Ray of this user); what is left."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            for p in self.procs:
                try:
                    os.killpg(p.pid, sig)  # the session leader's process group: gcs, raylet, agents, workers
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while self._left() and time.time() < deadline:
                time.sleep(0.5)
            if not self._left():
                break
        for p in self.procs:
            p.wait(timeout=10)
        left = self._left()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left

    def _left(self) -> list[str]:
        sids = {str(p.pid) for p in self.procs}
        ps = subprocess.run(["ps", "-eo", "sid=,stat=,pid=,args="], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if line.split(None, 1)[0] in sids and not line.split()[1].startswith("Z")]


@pytest.fixture
def cluster():
    if shutil.which(str(RAY)) is None:
        pytest.skip("the ray extra: pip install 'aifeedback[ray]'")
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        left = c.stop()
        assert not left, f"Ray processes left after the test: {left}"


def test_ray_address_runs_the_batches_on_that_cluster_with_the_sequential_labels(cluster, tmp_path):
    from aifeedback.store import RunStore

    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    args = {"pairs": str(src), "runs": str(tmp_path), "address": cluster.address}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DRIVER-RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(lines[-1].removeprefix("DRIVER-RESULT "))

    # the driver joined the cluster at the address (no cluster of its own) and left it running
    assert out["connected_after"], "the Ray submitter shut down a cluster it did not start"
    assert out["gcs_address"] == cluster.address
    assert out["alive_nodes"] == nodes  # the job saw the cluster's two nodes, not a one-node local cluster
    assert cluster.alive_nodes() == nodes

    ray_s, seq = out["ray"], out["sequential"]
    for s in (ray_s, seq):
        assert s["complete"] and s["n_in"] == 6 and s["n_out"] == 5 and s["n_excluded"] == 1
        assert s["batches"] == 3 and s["batches_computed"] == 3
    assert ray_s["runner"] == "ray" and seq["runner"] == "sequential"
    assert RunStore(tmp_path / "ray").history()[-1]["runner"] == "ray"

    # Ray's side: every batch was a run_batch task of this job, finished on a node of this cluster
    tasks = cluster.tasks(out["job_id"], until=lambda ts: sum(t["state"] == "FINISHED" for t in ts) >= 3)
    assert sorted(t["name"] for t in tasks) == ["run_batch"] * 3, [t["name"] for t in tasks]
    assert {t["state"] for t in tasks} == {"FINISHED"}
    assert {t["node_id"] for t in tasks} == set(nodes)  # both nodes ran batches: one CPU each, three batches in flight
    assert len({t["worker_pid"] for t in tasks}) == ray_s["worker_processes"] >= 2

    # the labels equal the sequential runner's, value for value
    stores = {name: RunStore(tmp_path / name) for name in ("ray", "sequential")}
    rows = {name: sorted(st.read_table("labels").to_pylist(), key=lambda r: r["pair_id"]) for name, st in stores.items()}
    assert [r["pair_id"] for r in rows["sequential"]] == ["c1", "c2", "c3", "c4", "c5"]
    assert all(0 <= r["p_ab"] <= 1 and 0 <= r["p_ba"] <= 1 for r in rows["sequential"])
    assert stores["ray"].keys("labels") == stores["sequential"].keys("labels")
    assert rows["ray"] == rows["sequential"]  # every column, p_ab and p_ba included
    assert stores["ray"].read_table("labels", excluded=True).to_pylist() == stores["sequential"].read_table("labels", excluded=True).to_pylist()
