"""The Batch API stand-in (tests/batch_standin.py) driven by the real ``openai`` client.

No llama server: the upstream here is a tiny test upstream, a real HTTP server on 127.0.0.1 that answers
POST /v1/chat/completions with a fixed OpenAI-shaped chat.completion echoing the last user message. It is a
test upstream, not a model, and not OpenAI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from batch_standin import EXPIRED_MESSAGE, BatchStandin
from openai.types import Batch, FileObject

KEY = "sk-standin-test-0123456789"


class EchoUpstream:
    """Test upstream: a chat.completion whose content is "echo: <last user message>"; 400 without messages."""

    def __init__(self):
        self.bodies: list[dict] = []

    def __enter__(self) -> EchoUpstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.bodies.append(body)
                users = [m["content"] for m in body.get("messages") or [] if m.get("role") == "user"]
                if self.path != "/v1/chat/completions" or not users:
                    status, out = 400, {"error": {"message": "'messages' must hold a user message", "type": "invalid_request_error", "param": "messages", "code": None}}
                else:
                    status, out = 200, {"id": "chatcmpl-test", "object": "chat.completion", "created": 1700000000, "model": body.get("model"),
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {users[-1]}"}, "logprobs": None, "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


@pytest.fixture
def upstream():
    with EchoUpstream() as up:
        yield up


def _request(custom_id: str, text: str | None, model: str = "test-model") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}] if text is not None else []}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _input(tmp_path: Path, requests: list[dict], name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def _client(api: BatchStandin) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{api.url}/v1", max_retries=0)


def _submit(client: openai.OpenAI, path: Path) -> Batch:
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def _poll(client: openai.OpenAI, batch_id: str, timeout: float = 15.0) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in ("failed", "completed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)
    return batch


def _file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(ln) for ln in client.files.content(file_id).text.splitlines()]


def test_upload_create_poll_and_download_through_the_openai_client(upstream, tmp_path):
    requests = [_request("a", "one"), _request("b", "two"), _request("c", "three"), _request("bad", None)]
    path = _input(tmp_path, requests)
    with BatchStandin(upstream.base_url, api_key=KEY) as api:
        client = _client(api)
        with open(path, "rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        assert isinstance(uploaded, FileObject) and uploaded.id.startswith("file-")
        assert (uploaded.filename, uploaded.bytes, uploaded.purpose, uploaded.status) == ("in.jsonl", path.stat().st_size, "batch", "processed")
        assert client.files.retrieve(uploaded.id).id == uploaded.id
        assert client.files.content(uploaded.id).content == path.read_bytes()

        raw = client.batches.with_raw_response.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "t1"})
        assert set(raw.http_response.json()) == set(Batch.model_fields)  # every field of the installed client's Batch
        created = raw.parse()
        assert created.id.startswith("batch_") and created.status == "validating" and created.metadata == {"run": "t1"}
        assert created.expires_at == created.created_at + 86_400 and api.creations == 1

        done = _poll(client, created.id)
        assert done.status == "completed" and done.completed_at and done.finalizing_at and done.in_progress_at
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
        assert done.model == "test-model" and done.usage.input_tokens == 15 and done.usage.total_tokens == 21

        out = _file_lines(client, done.output_file_id)
        assert [ln["custom_id"] for ln in out] == ["a", "b", "c"]
        for ln, text in zip(out, ["one", "two", "three"]):
            assert set(ln) == {"id", "custom_id", "response", "error"} and ln["id"].startswith("batch_req_") and ln["error"] is None
            assert set(ln["response"]) == {"status_code", "request_id", "body"} and ln["response"]["status_code"] == 200
            assert ln["response"]["body"]["choices"][0]["message"]["content"] == f"echo: {text}"
        [err] = _file_lines(client, done.error_file_id)
        assert err["custom_id"] == "bad" and err["error"] is None
        assert err["response"]["status_code"] == 400 and err["response"]["body"]["error"]["param"] == "messages"
        assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
        assert upstream.bodies[0] == requests[0]["body"]

        paths = [(c.method, c.path) for c in api.calls]
        assert ("POST", "/v1/files") in paths and ("POST", "/v1/batches") in paths and ("GET", f"/v1/batches/{created.id}") in paths
        assert all(c.headers["authorization"] == "[redacted]" for c in api.calls) and KEY not in repr(api.calls)
        assert api.calls[0].form == {"purpose": "batch", "file": {"filename": "in.jsonl", "bytes": path.stat().st_size}}
        assert not api.violations and not api.unhandled and not api.worker_errors


def test_all_requests_failing_leave_no_output_file(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        client = _client(api)
        done = _poll(client, _submit(client, _input(tmp_path, [_request("x", None), _request("y", None)])).id)
        assert done.status == "completed" and done.output_file_id is None and done.error_file_id is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)


def test_expire_after_keeps_done_requests_and_writes_the_rest_as_batch_expired(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.expire_after = 2
        client = _client(api)
        done = _poll(client, _submit(client, _input(tmp_path, [_request(f"r{i}", f"t{i}") for i in range(5)])).id)
        assert done.status == "expired" and done.expired_at and done.completed_at is None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 2, 3)
        assert [ln["custom_id"] for ln in _file_lines(client, done.output_file_id)] == ["r0", "r1"]
        expired = _file_lines(client, done.error_file_id)
        assert [ln["custom_id"] for ln in expired] == ["r2", "r3", "r4"]
        for ln in expired:
            assert ln == {"id": ln["id"], "custom_id": ln["custom_id"], "response": None, "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}}
            assert ln["id"].startswith("batch_req_")
        assert [f.custom_id for f in api.forwarded] == ["r0", "r1"] and len(upstream.bodies) == 2


def test_fail_request_answers_without_forwarding(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.fail_request = lambda custom_id, body: 500 if custom_id == "r1" else None
        client = _client(api)
        done = _poll(client, _submit(client, _input(tmp_path, [_request(f"r{i}", f"t{i}") for i in range(3)])).id)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        [err] = _file_lines(client, done.error_file_id)
        assert err["custom_id"] == "r1" and err["error"] is None and err["response"]["status_code"] == 500
        assert err["response"]["body"]["error"]["type"] == "server_error"
        assert [b["messages"][0]["content"] for b in upstream.bodies] == ["t0", "t2"]
        assert [(f.custom_id, f.injected) for f in api.forwarded] == [("r0", False), ("r1", True), ("r2", False)]


def test_validation_failures_fail_the_batch_with_line_numbers(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        client = _client(api)
        lines = [_request("a", "x"), _request("a", "y"), {"custom_id": "m", "method": "POST", "url": "/v1/embeddings", "body": {}}]
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
        done = _poll(client, _submit(client, path).id)
        assert done.status == "failed" and done.failed_at and done.output_file_id is None and done.error_file_id is None
        assert done.errors.object == "list"
        assert [(e.code, e.line, e.param) for e in done.errors.data] == [("duplicate_custom_id", 2, "custom_id"), ("url_mismatch", 3, "url"), ("invalid_json_line", 4, None)]
        assert done.request_counts.total == 0 and not upstream.bodies

        api.fail_validation = True
        injected = _poll(client, _submit(client, _input(tmp_path, [_request("ok", "fine")], "good.jsonl")).id)
        assert injected.status == "failed" and injected.errors.data[0].code == "injected_validation_failure" and not upstream.bodies
        api.fail_validation = False
        assert _poll(client, _submit(client, _input(tmp_path, [_request("ok", "fine")], "good.jsonl")).id).status == "completed"


def test_cancel_keeps_the_done_requests_and_drops_the_rest(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.delay_s = 0.2
        client = _client(api)
        batch = _submit(client, _input(tmp_path, [_request(f"r{i}", f"t{i}") for i in range(20)]))
        deadline = time.monotonic() + 10
        while client.batches.retrieve(batch.id).request_counts.completed < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = _poll(client, batch.id)
        assert done.status == "cancelled" and done.cancelling_at and done.cancelled_at and done.completed_at is None
        out = _file_lines(client, done.output_file_id)
        assert 2 <= len(out) < 20 and len(out) == done.request_counts.completed == len(upstream.bodies)
        assert done.error_file_id is None and done.request_counts.total == 20
        with pytest.raises(openai.BadRequestError):
            client.batches.cancel(batch.id)


def test_cancel_of_a_queued_batch_ends_it_without_requests(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.delay_s = 0.2
        client = _client(api)
        first = _submit(client, _input(tmp_path, [_request(f"r{i}", "t") for i in range(5)]))
        queued = _submit(client, _input(tmp_path, [_request("q", "t")], "q.jsonl"))
        assert client.batches.retrieve(queued.id).status == "validating"
        assert client.batches.cancel(queued.id).status == "cancelling"
        assert client.batches.retrieve(queued.id).status == "cancelled"
        client.batches.cancel(first.id)
        api.wait(first.id)
        assert "q" not in [b["messages"][0]["content"] for b in upstream.bodies]


def test_in_progress_floor_holds_the_batch_in_progress(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.in_progress_floor_s = 1.0
        client = _client(api)
        batch = _submit(client, _input(tmp_path, [_request("a", "x")]))
        api.wait(batch.id, statuses=("in_progress",))
        began = time.monotonic()
        assert _poll(client, batch.id).status == "completed"
        assert time.monotonic() - began >= 0.8


def test_list_is_newest_first_and_paginates(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        api.fail_validation = True  # no upstream traffic needed
        client = _client(api)
        path = _input(tmp_path, [_request("a", "x")])
        ids = [_submit(client, path).id for _ in range(5)]
        raw = client.batches.with_raw_response.list(limit=2).http_response.json()
        assert [b["id"] for b in raw["data"]] == [ids[4], ids[3]]
        assert (raw["object"], raw["first_id"], raw["last_id"], raw["has_more"]) == ("list", ids[4], ids[3], True)
        second = client.batches.list(limit=2, after=ids[3])
        assert [b.id for b in second.data] == [ids[2], ids[1]] and second.has_more
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-pagination walks every page
        last = client.batches.list(limit=2, after=ids[1])
        assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=101)


def test_unknown_ids_and_bad_parameters_get_openai_shaped_errors(upstream, tmp_path):
    with BatchStandin(upstream.base_url) as api:
        client = _client(api)
        with pytest.raises(openai.NotFoundError) as exc:
            client.batches.retrieve("batch_nope")
        assert exc.value.status_code == 404 and set(exc.value.body) == {"message", "type", "param", "code"}
        assert exc.value.body["type"] == "invalid_request_error"
        for call in (lambda: client.files.retrieve("file-nope"), lambda: client.files.content("file-nope"), lambda: client.batches.cancel("batch_nope"),
                     lambda: client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        uploaded = client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
        with pytest.raises(openai.BadRequestError) as exc:
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h")
        assert exc.value.body["param"] == "completion_window"
        with pytest.raises(openai.BadRequestError):
            client.files.create(file=("in.txt", b"x"), purpose="batch")
        assert api.creations == 0


def test_oversized_upload_is_413(tmp_path):
    with BatchStandin(None, max_file_bytes=1000) as api:
        client = _client(api)
        assert client.files.create(file=("ok.jsonl", b"x" * 1000), purpose="batch").bytes == 1000
        with pytest.raises(openai.APIStatusError) as exc:
            client.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
        assert exc.value.status_code == 413 and exc.value.body["message"].startswith("File is too large")
        assert len(api.files) == 1


def test_wrong_key_is_401(upstream):
    with BatchStandin(upstream.base_url, api_key=KEY) as api:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="sk-wrong", base_url=f"{api.url}/v1", max_retries=0).batches.list()


CLIENT = textwrap.dedent("""
    import sys, time, openai
    client = openai.OpenAI(api_key="sk-x", base_url=sys.argv[1], max_retries=0)
    f = client.files.create(file=("in.jsonl", open(sys.argv[2], "rb").read()), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    print(b.id, flush=True)
    while True:
        client.batches.retrieve(b.id)
        time.sleep(0.05)
""")


def test_a_killed_subprocess_client_leaves_the_batch_running(upstream, tmp_path):
    path = _input(tmp_path, [_request(f"r{i}", f"t{i}") for i in range(6)])
    with BatchStandin(upstream.base_url) as api:
        api.delay_s = 0.1
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, f"{api.url}/v1", str(path)], stdout=subprocess.PIPE, text=True)
        batch_id = proc.stdout.readline().strip()
        deadline = time.monotonic() + 20
        while api.batches[batch_id].completed < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        polls = len(api.calls)
        done = api.wait(batch_id)
        assert done.status == "completed" and done.completed == 6 and len(api.lines(done.output_file_id)) == 6
        assert len(api.calls) == polls  # nobody polled after the kill
        assert _poll(_client(api), batch_id).status == "completed"  # a new client picks it up
