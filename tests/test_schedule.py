"""Scheduling for real: a Prefect server on 127.0.0.1, `aifeedback schedule` on a short interval, `aifeedback runs`."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from aifeedback.store import RunStore

from conftest import REPO, free_port

PAIRS = [
    {"pair_id": "c1", "prompt": "What is 2+2?", "response_a": "2+2 is 4.", "response_b": "It is 22."},
    {"pair_id": "c2", "prompt": "Name a yellow fruit.", "response_a": "A banana.", "response_b": "A cucumber."},
    {"pair_id": "c3", "prompt": "Say hi.", "response_a": "", "response_b": "Hello."},  # excluded: empty
]


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        _stop(proc)
        pytest.fail("Prefect server did not become healthy in 180 s: " + (tmp_path / "server.log").read_text()[-3000:])
    yield url
    _stop(proc)


@pytest.mark.slow
def test_scheduled_label_run_completes_and_writes_the_run_store(tmp_path, prefect_server):
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run_dir = tmp_path / "scheduled-run"
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "client-home"), COLUMNS="200")
    cli = [str(REPO / ".venv" / "bin" / "aifeedback")] if (REPO / ".venv" / "bin" / "aifeedback").exists() else [sys.executable, "-m", "flows.cli"]
    serve_log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(
        cli + ["schedule", "label", "--interval", "20", "--name", "label-every-20s", "--run-dir", str(run_dir), "--set", f"input={src}", "--set", "batch_size=2"],
        env=env, stdout=serve_log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
    )
    try:
        deadline = time.time() + 420
        runs: list = []
        while time.time() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            out = subprocess.run(cli + ["runs", "--json", "--deployment", "label-every-20s"], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            runs = json.loads(out.stdout)
            if any(r["state"] == "Completed" for r in runs):
                break
            assert not any(r["state"] in ("Failed", "Crashed") for r in runs), (runs, (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(5)
        done = [r for r in runs if r["state"] == "Completed"]
        assert done, f"no scheduled run completed in time: {runs}\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
        assert done[0]["flow"] == "label" and done[0]["deployment"] == "label-every-20s"
        assert done[0]["parameters"]["run_dir"] == str(run_dir)
    finally:
        _stop(serve, signal.SIGINT)
    store = RunStore(run_dir)
    counts = store.counts("labels")
    assert counts == {"n_in": 3, "n_out": 2, "n_excluded": 1}
    assert len(store.read_table("labels")) == 2


def test_prefect_yaml_deployments_load_and_validate():
    """Every deployment's module entrypoint imports, and its parameters pass the flow's own schema."""
    import importlib

    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        module, _, attr = dep["entrypoint"].partition(":")
        assert "/" not in module and not module.endswith(".py")  # module paths, not files
        fl = getattr(importlib.import_module(module), attr)
        assert dep["enforce_parameter_schema"] is True
        fl.validate_parameters(dep.get("parameters", {}))  # raises on an unknown or mistyped parameter
        for sched in dep["schedules"]:
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone"))
        names.add(dep["entrypoint"])
    assert {"flows.prefect_flows:label_flow", "flows.prefect_flows:pipeline_flow"} <= names
    from prefect.exceptions import SignatureMismatchError

    with pytest.raises(SignatureMismatchError, match="no_such_parameter"):
        importlib.import_module("flows.prefect_flows").label_flow.validate_parameters({"run_dir": "x", "no_such_parameter": 1})


def test_schedule_parameters_fit_every_flow(tmp_path):
    """`aifeedback schedule FLOW` builds parameters each flow accepts, and refuses ones it does not, naming what it accepts."""
    from aifeedback.errors import ConfigError
    from flows.schedule import FLOWS, flow_parameters

    sets = {
        "generate": {"limit": 2},
        "revise": {"rounds": 1},
        "label": {"batch_size": 8},
        "pipeline": {"label": {"batch_size": 8}},
        "demo": {"n_prompts": 2},
        "export": {"options": {"min_confidence": 0.2}},
        "agreement": {"human": "h.jsonl", "human_format": "generic", "runs": [f"ai={tmp_path}"]},
        "train-rm": {"out_dir": "models/rm", "overrides": {"labels": "hard"}},
        "train-rl": {"out_dir": "models/rl"},
        "train-dpo": {"out_dir": "models/dpo", "preferences": "p.parquet"},
    }
    assert set(sets) == set(FLOWS)
    import inspect

    from flows.schedule import load_flow

    for name, s in sets.items():
        params = flow_parameters(name, str(tmp_path), None, s)
        accepted = set(inspect.signature(load_flow(name).fn).parameters)
        assert params and set(params) <= accepted, (name, params)
        carried = params.get("overrides") if "overrides" in params and "overrides" not in s else params
        for key, value in s.items():  # every value the user set reaches the flow, where the flow takes it
            assert carried.get(key, params.get(key)) == value, (name, key, params)
    assert flow_parameters("train-rm", str(tmp_path), None, sets["train-rm"])["run_dir"] == str(tmp_path)
    assert "run_dir" not in flow_parameters("train-dpo", str(tmp_path), None, sets["train-dpo"])  # optional: not filled in
    assert flow_parameters("train-rm", str(tmp_path), "rm.yaml", sets["train-rm"])["config_path"] == os.path.abspath("rm.yaml")  # --config reaches its config_path
    with pytest.raises(ConfigError, match="accepts: human"):
        flow_parameters("agreement", str(tmp_path), None, {"overrides": {}})
    with pytest.raises(ConfigError, match="--config applies only to flows that read a config file"):
        flow_parameters("export", str(tmp_path), "x.yaml", {})


def test_the_flow_registry_readme_and_prefect_yaml_agree():
    """FLOWS (flows/schedule.py) is the one list: each entry is the flow of that name, every prefect.yaml deployment
    runs one of them, the README names every deployment and lists exactly these flows, and the CLI help lists them."""
    import importlib
    import re

    import yaml
    from typer.main import get_command

    from flows.cli import app
    from flows.schedule import FLOWS

    for name, entrypoint in FLOWS.items():
        module, _, attr = entrypoint.partition(":")
        assert getattr(importlib.import_module(module), attr).name == name  # `aifeedback runs --flow NAME` filters by it
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    for dep in spec["deployments"]:
        assert dep["entrypoint"] in FLOWS.values(), f"deployment {dep['name']} runs {dep['entrypoint']}, not a flow in FLOWS"
        assert dep["name"] in readme, f"README does not name the deployment {dep['name']}"
    listed = re.search(r"Flows \(`aifeedback schedule FLOW`.*?\): (.*?)\. ", readme, re.S)
    assert listed, "README lost its list of flows"
    assert re.findall(r"`([\w-]+)`", listed.group(1)) == list(FLOWS)
    commands = get_command(app).commands
    for command, param in (("schedule", "flow"), ("runs", "flow")):
        help_text = next(p.help for p in commands[command].params if p.name == param)
        assert all(name in help_text for name in FLOWS), help_text
