"""Batch mode (aifeedback/batch_api.py) against a local Batch API stand-in that forwards to the real llama.cpp server.

The stand-in (tests/batch_standin.py) is not OpenAI: it answers the files and batches calls the
official ``openai`` client makes, runs each batch in the background against the test session's
llama.cpp server, and injects the faults these tests need (expiry, failed requests, failed
validation, slow completion). Everything else is real: the label flow, the run store, the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batch_standin import BatchStandin
from test_reliability import _cli, _pairs_file

from aifeedback.batch_files import BATCH_DIR, BatchBook, read_result_line
from aifeedback.store import RunStore

PRICES = {"smollm2": {"input": 2.0, "output": 8.0}}  # per million tokens; batch: half, unless given


def _backend(base_url: str, **kw) -> dict:
    return {"kind": "openai", "model": "smollm2", "base_url": base_url, "max_concurrency": 1, **kw}


def _label(run: Path, src: Path, backend: dict, **kw) -> dict:
    from flows.label import run_label

    return run_label(run_dir=str(run), overrides={"input": str(src), "batch_size": 4, "backend": backend, **kw})


def _labels(run: Path) -> dict[str, dict]:
    return {r["pair_id"]: r for r in RunStore(run).read_table("labels").to_pylist()}


def _excluded(run: Path) -> list[dict]:
    return RunStore(run).read_table("labels", excluded=True).to_pylist()


def _records(run: Path) -> list[dict]:
    return BatchBook(run, "labels").records()


def _written(standin, tmp_path: Path, n: int) -> tuple[Path, Path, BatchBook, dict]:
    """A run whose label stage wrote its requests to one file (--batch-file-only) and sent nothing: (pairs, run, book, record)."""
    src = _pairs_file(tmp_path / "pairs.jsonl", n)
    run = tmp_path / "run"
    _label(run, src, _backend(standin.base_url, batch_file_only=True))
    book = BatchBook(run, "labels")
    (rec,) = book.records()
    return src, run, book, rec


def _has_batch(run: Path) -> bool:
    """A batch of the run exists at the endpoint (its record holds the id)."""
    try:
        return any(r.get("batch_id") for r in _records(run))
    except Exception:  # a record being replaced right now
        return False


@pytest.fixture
def standin(llama_server):
    with BatchStandin(upstream_base_url=llama_server.base_url) as s:
        s.base_url = f"{s.url}/v1"
        yield s


def test_labels_equal_the_synchronous_path_and_record_batch_ids(llama_server, standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 6)  # 6 pairs and one bad row
    sync = _label(tmp_path / "sync", src, _backend(llama_server.base_url))
    got = _label(tmp_path / "batch", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2))
    assert sync["complete"] and got["complete"]
    assert (got["n_in"], got["n_out"], got["n_excluded"]) == (sync["n_in"], sync["n_out"], sync["n_excluded"]) == (7, 6, 1)
    a, b = _labels(tmp_path / "sync"), _labels(tmp_path / "batch")
    assert a.keys() == b.keys()
    for pid in a:
        for k in ("p_ab", "p_ba", "p_a"):
            assert b[pid][k] == pytest.approx(a[pid][k], abs=1e-6), (pid, k)
        assert b[pid]["hard_label"] == a[pid]["hard_label"] and b[pid]["prob_source"] == a[pid]["prob_source"] == "logprobs"
        assert a[pid]["batch_id"] is None and b[pid]["batch_id"] in standin.batches
    assert standin.creations == 1 and got["batches_created"] == 1
    # one request per pair and order, under ITEMKEY:ORDER
    (rec,) = _records(tmp_path / "batch")
    keys = {r["item_key"] for r in b.values()}
    assert set(rec["digests"]) == {f"{k}:{o}" for k in keys for o in ("AB", "BA")}
    assert got["requests"] == sync["requests"] == 12 and got["prompt_tokens"] == sync["prompt_tokens"]
    # a re-run sends nothing
    again = _label(tmp_path / "batch", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2))
    assert again["complete"] and standin.creations == 1 and again["batches_computed"] == 0


def test_generate_and_revise_through_batches_equal_the_synchronous_path(llama_server, standin, tmp_path):
    """Samples (seeded) and critique -> revision chains: a revision needs its critique's answer first, so each
    round is two batch rounds; the rows equal the synchronous path's."""
    from flows.generate import run_generate
    from flows.revise import run_revise

    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "prompt": q}) + "\n" for i, q in enumerate(["Name a colour.", "Say hello to a friend.", "What is 2 + 2?"])))
    gen = {"input": str(src), "id_column": "id", "sampling": {"n": 2, "max_new_tokens": 12, "temperature": 0.7}}
    rev = {"constitution": "harmless", "rounds": 1, "few_shot": False, "sampling": {"max_new_tokens": 12}}
    out = {}
    # one base URL for both paths (the stand-in forwards synchronous calls too): ids and seeds hash the backend's identity
    for name, backend in (("sync", _backend(standin.base_url)), ("batch", _backend(standin.base_url, batch=True, batch_poll_s=0.2))):
        run = tmp_path / name
        g = run_generate(run_dir=str(run), overrides={**gen, "backend": backend})
        r = run_revise(run_dir=str(run), overrides={**rev, "backend": backend})
        assert g["complete"] and r["complete"] and g["n_out"] == 6 and r["n_out"] + r["n_excluded"] == 6
        store = RunStore(run)
        out[name] = ({x["response_id"]: x for x in store.read_table("responses").to_pylist()}, {x["revision_id"]: x for x in store.read_table("revisions").to_pylist()})
    (ra, va), (rb, vb) = out["sync"], out["batch"]
    assert ra.keys() == rb.keys() and [ra[k]["response"] for k in ra] == [rb[k]["response"] for k in ra]
    assert va.keys() == vb.keys() and [(va[k]["rounds"], va[k]["final_revision"]) for k in va] == [(vb[k]["rounds"], vb[k]["final_revision"]) for k in va]
    assert all(x["batch_id"] for x in [*rb.values(), *vb.values()]) and not any(x["batch_id"] for x in [*ra.values(), *va.values()])
    assert standin.creations == 3  # samples; critiques; revisions


def test_cost_is_tokens_times_batch_prices(standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 3)
    half = _label(tmp_path / "half", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2, prices=PRICES))
    given = {"smollm2": {"input": 2.0, "output": 8.0, "batch_input": 0.3, "batch_output": 0.7}}
    own = _label(tmp_path / "own", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2, prices=given))
    pt, ct = half["prompt_tokens"], half["completion_tokens"]
    assert pt > 0 and ct > 0 and (own["prompt_tokens"], own["completion_tokens"]) == (pt, ct)
    assert half["cost_usd"] == pytest.approx(pt * 1.0 / 1e6 + ct * 4.0 / 1e6, rel=1e-9)  # half of 2 and 8
    assert own["cost_usd"] == pytest.approx(pt * 0.3 / 1e6 + ct * 0.7 / 1e6, rel=1e-9)
    from flows.cli import app

    res = CliRunner().invoke(app, ["runs", "--run-dir", str(tmp_path / "half"), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["totals"]["labels"]["cost_usd"] == pytest.approx(half["cost_usd"]) and shown["totals"]["labels"]["batch_api_requests"] == 6
    assert shown["batches"]["labels"]["completed"] == {"batches": 1, "requests": 6, "failed_requests": 0}


def test_expired_and_failed_requests_are_excluded_then_labelled_next_run(standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 6)
    backend = _backend(standin.base_url, batch=True, batch_poll_s=0.2)
    standin.expire_after = 8  # 8 of the 12 requests run, then the window "expires"
    failed: list[str] = []

    def fail_one(cid: str, body: dict) -> int | None:  # the first A-first request answers HTTP 500
        if cid.endswith(":AB") and not failed:
            failed.append(cid)
            return 500
        return None

    standin.fail_request = fail_one
    first = _label(tmp_path / "run", src, backend)
    bid = next(iter(standin.batches))
    assert first["complete"] and first["n_in"] == 7 and first["n_out"] + first["n_excluded"] == 7
    ex = [e for e in _excluded(tmp_path / "run") if e["reason"] == "backend_error"]
    assert len(ex) >= 2 and first["n_out"] == 6 - len(ex)
    assert all(e["batch_id"] == bid and bid in e["detail"] for e in ex)
    assert any("batch_expired" in e["detail"] for e in ex) and any("HTTP 500" in e["detail"] for e in ex)
    standin.expire_after, standin.fail_request = None, None
    second = _label(tmp_path / "run", src, backend)
    assert second["complete"] and (second["n_out"], second["n_excluded"]) == (6, 1)
    assert standin.creations == 2
    resent = standin.batches[[b for b in standin.batches if b != bid][0]]
    assert resent.total <= 2 * len(ex)  # only the excluded pairs' missing requests went again


def test_a_batch_that_fails_validation_excludes_its_pairs_then_they_go_again(standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 3)
    backend = _backend(standin.base_url, batch=True, batch_poll_s=0.2)
    standin.fail_validation = True
    first = _label(tmp_path / "run", src, backend)
    bid = next(iter(standin.batches))
    ex = [e for e in _excluded(tmp_path / "run") if e["reason"] == "backend_error"]
    assert first["complete"] and (first["n_out"], first["n_excluded"]) == (0, 4) and len(ex) == 3
    assert all(e["batch_id"] == bid and "failed validation" in e["detail"] for e in ex)
    standin.fail_validation = False
    again = _label(tmp_path / "run", src, backend)
    assert again["complete"] and (again["n_out"], again["n_excluded"]) == (3, 1) and standin.creations == 2


def test_small_limits_split_the_work(standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 6)
    s = _label(tmp_path / "run", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2, batch_max_requests=5))
    recs = _records(tmp_path / "run")
    assert s["complete"] and s["n_out"] == 6
    assert [r["n_requests"] for r in recs] == [5, 5, 2] or sorted(r["n_requests"] for r in recs) == [2, 5, 5]
    assert standin.creations == 3 == s["batches_created"]
    one = len(next(iter((tmp_path / "run" / BATCH_DIR / "labels").glob("*.requests.jsonl"))).read_bytes().splitlines()[0]) + 1
    s2 = _label(tmp_path / "run2", src, _backend(standin.base_url, batch=True, batch_poll_s=0.2, batch_max_bytes=max(1024, 3 * one)))
    assert s2["complete"] and all(r["bytes"] <= max(1024, 3 * one) for r in _records(tmp_path / "run2")) and len(_records(tmp_path / "run2")) >= 4


def test_kill_during_polling_then_rerun_creates_no_new_batch(standin, tmp_path):
    src = _pairs_file(tmp_path / "pairs.jsonl", 6)
    run = tmp_path / "run"
    cmd = [*_cli(), "label", "--input", str(src), "--run-dir", str(run), "--backend", "openai", "--model", "smollm2", "--base-url", standin.base_url, "--batch",
           "--set", "batch_size=4", "--set", "backend.batch_poll_s=0.2"]
    standin.delay_s = 0.5  # 12 requests: about 6 s, so the client is polling when killed
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _has_batch(run):
        time.sleep(0.1)
    time.sleep(0.5)  # polling now
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert standin.creations == 1 and not (run / "labels" / "_manifest.json").is_file()
    standin.delay_s = 0.0
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert standin.creations == 1  # polled the recorded batch, never resubmitted
    assert len(_labels(run)) == 6 and len([e for e in _excluded(run) if e["reason"] == "backend_error"]) == 0


def test_a_batch_created_before_its_record_was_written_is_found_again(standin, tmp_path):
    """A kill between batches.create and the record's write: the re-run finds the batch by its input file."""
    import openai

    src, run, book, rec = _written(standin, tmp_path, 2)
    client = openai.OpenAI(api_key="no-key", base_url=standin.base_url)
    f = client.files.create(file=book.requests_path(rec).open("rb"), purpose="batch")
    client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    rec.update(status="uploaded", input_file_id=f.id)  # what the record says when the kill came right after create
    book.save(rec)
    s = _label(run, src, _backend(standin.base_url, batch=True, batch_poll_s=0.2))
    assert s["complete"] and s["n_out"] == 2 and standin.creations == 1


def test_cancel_batches_cancels_the_open_ones_and_their_requests_go_again(standin, tmp_path):
    from aifeedback.batch_api import make_client, submit
    from aifeedback.config import BackendConfig
    from flows.cli import app

    src, run, book, rec = _written(standin, tmp_path, 2)
    standin.delay_s = 5.0  # stays in progress
    cfg = BackendConfig(**_backend(standin.base_url, batch=True, batch_poll_s=0.2))
    submit(make_client(cfg), book, rec, cfg, run)
    (rec,) = book.records()
    res = CliRunner().invoke(app, ["cancel-batches", "--run-dir", str(run)])
    assert res.exit_code == 0 and f"{rec['batch_id']}: cancelling" in res.output and "1 open batch(es) cancelled" in res.output, res.output
    assert standin.wait(rec["batch_id"]).status == "cancelled"
    standin.delay_s = 0.0
    first = _label(run, src, _backend(standin.base_url, batch=True, batch_poll_s=0.2))
    ex = [e for e in _excluded(run) if e["reason"] == "backend_error"]
    assert first["complete"] and len(ex) == 2 and all(e["batch_id"] == rec["batch_id"] and "cancelled" in e["detail"] for e in ex)
    again = _label(run, src, _backend(standin.base_url, batch=True, batch_poll_s=0.2))
    assert again["complete"] and (again["n_out"], again["n_excluded"]) == (2, 1) and standin.creations == 2
    res = CliRunner().invoke(app, ["cancel-batches", "--run-dir", str(run)])
    assert res.exit_code == 0 and "no open batches" in res.output


def test_file_only_then_import_gives_the_same_rows(llama_server, standin, tmp_path):
    import openai

    src = _pairs_file(tmp_path / "pairs.jsonl", 4)
    sync = _label(tmp_path / "sync", src, _backend(llama_server.base_url))
    run = tmp_path / "run"
    first = _label(run, src, _backend(standin.base_url, batch_file_only=True))
    assert not first["complete"] and standin.creations == 0 and not standin.calls  # nothing sent
    (req,) = sorted((run / BATCH_DIR / "labels").glob("*.requests.jsonl"))
    # run the file elsewhere: here, by hand through the stand-in with the official client
    client = openai.OpenAI(api_key="no-key", base_url=standin.base_url)
    f = client.files.create(file=req.open("rb"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while b.status not in ("completed", "failed", "expired"):
        time.sleep(0.2)
        b = client.batches.retrieve(b.id)
    out = tmp_path / "results.jsonl"
    out.write_bytes(client.files.content(b.output_file_id).read())
    from flows.cli import app

    res = CliRunner().invoke(app, ["import-batch-output", str(out), "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    a, got = _labels(tmp_path / "sync"), _labels(run)
    assert a.keys() == got.keys() and len(got) == 4
    for pid in a:
        assert got[pid]["p_a"] == pytest.approx(a[pid]["p_a"], abs=1e-6) and got[pid]["batch_id"].startswith("import-")
    assert RunStore(run).manifest("labels")["n_out"] == 4 and sync["n_out"] == 4


def test_bad_batch_input_is_one_line_and_exit_2(standin, tmp_path):
    from flows.cli import app

    src = _pairs_file(tmp_path / "pairs.jsonl", 2)
    runner = CliRunner()
    # a limit of 0
    res = runner.invoke(app, ["label", "--input", str(src), "--run-dir", str(tmp_path / "r0"), "--backend", "openai", "--model", "smollm2", "--base-url", standin.base_url, "--batch", "--set", "backend.batch_max_requests=0"])
    assert res.exit_code == 2 and "batch_max_requests" in res.output and "greater than or equal to 1" in res.output, res.output
    # an output file whose ids match no request of the run
    run = tmp_path / "run"
    _label(run, src, _backend(standin.base_url, batch_file_only=True))
    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps({"id": "x", "custom_id": "nobody:AB", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}) + "\n")
    res = runner.invoke(app, ["import-batch-output", str(stray), "--run-dir", str(run)])
    assert res.exit_code == 2 and "none of its 1 custom ids" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    # a batch id the endpoint does not know: the run's record says a batch is open there
    (rec,) = _records(run)
    rec.update(status="in_progress", batch_id="batch_unknown0000", input_file_id="file-unknown")
    BatchBook(run, "labels").save(rec)
    res = runner.invoke(app, ["label", "--input", str(src), "--run-dir", str(run), "--backend", "openai", "--model", "smollm2", "--base-url", standin.base_url, "--batch", "--set", "backend.batch_poll_s=0.2"])
    assert res.exit_code == 2 and "batch_unknown0000" in res.output and "unknown to" in res.output, res.output
    assert standin.creations == 0


def test_result_lines_of_openai_and_vllm_shapes():
    """One parser for the API's output and error files and vllm run-batch's output (known lines)."""
    ok = {"id": "batch_req_1", "custom_id": "k:AB", "response": {"status_code": 200, "request_id": "r", "body": {"choices": [{"message": {"content": "1"}}]}}, "error": None}
    cid, a = read_result_line(ok, "batch_1")
    assert (cid, a.error, a.batch_id) == ("k:AB", None, "batch_1") and a.body["choices"][0]["message"]["content"] == "1"
    expired = {"id": "batch_req_2", "custom_id": "k:BA", "response": None, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}
    assert read_result_line(expired, "batch_1")[1].error == "batch batch_1: batch_expired: This request could not be executed before the completion window expired."
    failed = {"id": "batch_req_3", "custom_id": "k:r0", "response": {"status_code": 500, "request_id": "r", "body": {"error": {"message": "boom", "type": "server_error"}}}, "error": None}
    assert read_result_line(failed, "batch_1")[1].error == "batch batch_1: HTTP 500: boom"
    vllm = {"id": "vllm-abc", "custom_id": "k:AB", "response": {"status_code": 200, "request_id": "vllm-batch-x", "body": {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "2"}}]}}, "error": None}
    assert read_result_line(vllm, "import-1")[1].body["choices"][0]["message"]["content"] == "2"
    with pytest.raises(ValueError, match="custom_id"):
        read_result_line({"id": "x"}, "b")


@pytest.mark.parametrize("argv", [["label", "--input", "x.jsonl"], ["generate", "--input", "x.jsonl"], ["revise"], ["loop"]])
def test_batch_flag_is_on_every_stage_and_needs_the_openai_backend(argv, tmp_path):
    from flows.cli import app

    res = CliRunner().invoke(app, [*argv, "--run-dir", str(tmp_path / "r"), "--batch"])
    assert res.exit_code == 2 and "batch' is a setting of the openai backend" in res.output and "to openai" in res.output, res.output
