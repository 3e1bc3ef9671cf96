"""A stand-in for OpenAI's Batch API (Files + Batches): a real HTTP server on 127.0.0.1 that a test points the
official ``openai`` client at with ``base_url=f"{standin.url}/v1"``.

It is not OpenAI. It answers exactly the calls openai-python (3.60, ``resources/files.py`` and
``resources/batches.py``) makes for the methods below, shaped like the real responses (``types/batch.py``,
``file_object.py``, ``batch_request_counts.py``, ``batch_error.py``, and the Batch guide,
developers.openai.com/api/docs/guides/batch, for the output and error lines):

    POST /v1/files                    files.create(file=..., purpose="batch")  multipart: purpose, file -> FileObject
    GET  /v1/files/{id}               files.retrieve(id)                      -> FileObject
    GET  /v1/files/{id}/content       files.content(id)                       -> the raw bytes
    POST /v1/batches                  batches.create(input_file_id, endpoint, completion_window, metadata) -> Batch
    GET  /v1/batches/{id}             batches.retrieve(id)                    -> Batch
    POST /v1/batches/{id}/cancel      batches.cancel(id)                      -> Batch, "cancelling"
    GET  /v1/batches                  batches.list(limit=, after=)            -> {object: list, data, first_id, last_id, has_more}
    POST /v1/chat/completions         the synchronous API, forwarded to the upstream as it is (no faults, not recorded
                                      in ``forwarded``), so one base URL serves both paths, as OpenAI's does

What it does not answer: files.list, files.delete, files.wait_for_processing, uploads (the multipart
Uploads API), ``output_expires_after`` (accepted, ignored), any purpose but "batch", and any endpoint but the
batch's own. Those get 404 ``Invalid URL (...)`` or a 400, and the route is kept in ``unhandled``.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: unknown file or batch 404, no
Authorization 401, a wrong key 401 (only when ``api_key`` is given), a ``completion_window`` other than "24h"
400, an upload over ``max_file_bytes`` 413 (default 200 MB, the Batch API's input limit in the
``files.create`` docstring), cancelling a finished batch 400.

Processing. Each created batch is queued ("validating") and one worker thread takes them in order. It
validates the input file (a line that is not JSON, a missing custom_id/method/url/body, a method other than
POST, a url other than the batch's endpoint, a duplicate custom_id, a second model, an empty file, more than
``max_requests`` lines): any problem makes the batch "failed" with ``errors = {"object": "list", "data":
[{code, message, param, line}]}`` and no files. Otherwise it goes "in_progress" and the worker POSTs each
line's ``body`` to ``upstream_base_url`` + the url after ``/v1`` (a llama.cpp server, say), one at a time,
updating ``request_counts`` as it goes. Lines, as the Batch guide shows them:

    output file (2xx):   {"id": "batch_req_<hex>", "custom_id": ..., "response": {"status_code": 200,
                          "request_id": "<hex>", "body": <the upstream JSON>}, "error": null}
    error file (non-2xx): the same with the upstream's status_code and error JSON as body
    error file (expired): {"id": ..., "custom_id": ..., "response": null, "error": {"code": "batch_expired",
                          "message": "This request could not be executed before the completion window expired."}}

An unreachable upstream or a non-JSON answer becomes a 500 line with a ``server_error`` body. At the end
``output_file_id``/``error_file_id`` name files of purpose "batch_output", and either is null when its file
would be empty (as the real API does: an all-failed batch completes with ``output_file_id`` null). A
cancelled batch keeps the lines already done; requests not yet sent go nowhere. Expired requests count as
failed, so completed + failed == total at the end of an expired batch. ``usage`` sums the upstream usage
once the batch ends.

Faults, attributes a test may set before or during a run (read at each request):

    expire_after: int | None          after this many requests of a batch are done, it expires ("expired")
    fail_request: (custom_id, body) -> int | None
                                      a status to answer that request with instead of forwarding it
                                      (a server_error body); None forwards it
    fail_validation: bool             while True, every batch the worker takes fails validation
                                      (code "injected_validation_failure")
    delay_s: float                    sleep before each request (a cancel cuts the sleep short)
    in_progress_floor_s: float        a batch stays in_progress at least this long before it ends

Every request is recorded in ``calls`` (method, path, query, time, headers with Authorization redacted,
JSON body or multipart fields, status); every upstream request in ``forwarded``; the key anywhere but the
Authorization header is written to ``violations``. State: ``files`` (id -> StoredFile), ``batches``
(id -> BatchState), ``creations`` (batches created). The server and worker are threads of the test process,
so a client in a subprocess can be killed mid-poll and the batch keeps going.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from queue import Queue
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from standin_http import StandinHandler

DAY = 86_400
BATCH_FILE_LIMIT = 200 * 1024 * 1024  # files.create docstring: "The Batch API only supports .jsonl files up to 200 MB"
MAX_REQUESTS = 50_000  # batches.create docstring: "The file can contain up to 50,000 requests"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
TERMINAL = ("failed", "completed", "expired", "cancelled")
ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations", "/v1/images/generations", "/v1/images/edits")
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
FILE_ROUTE = re.compile(r"^/v1/files/([^/]+)(/content)?$")
BATCH_ROUTE = re.compile(r"^/v1/batches/([^/]+)(/cancel)?$")
PASSTHROUGH = -1  # route()'s status for a synchronous call the handler forwards after releasing the lock


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Call:
    """One request as the stand-in saw it; ``headers`` has the Authorization value redacted."""

    method: str
    path: str
    query: dict
    headers: dict
    time: float
    json: object = None
    form: dict | None = None  # multipart fields; the file part as {"filename", "bytes"}
    status: int = 0


@dataclass
class Forwarded:
    """One request the worker sent upstream (or answered itself through ``fail_request``)."""

    batch_id: str
    custom_id: str
    status: int
    injected: bool
    time: float


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict:
        # files of purpose batch (and batch outputs) expire after 30 days by default (files.create docstring)
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "expires_at": self.created_at + 30 * DAY, "status_details": None}


@dataclass
class BatchState:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created_at: int
    status: str = "validating"
    at: dict = field(default_factory=dict)  # in_progress_at, ..., cancelled_at
    errors: dict | None = None
    model: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: dict | None = None
    output_lines: list[dict] = field(default_factory=list)
    error_lines: list[dict] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    started: bool = False  # taken by the worker
    cancel: threading.Event = field(default_factory=threading.Event)

    def object(self) -> dict:
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors, "input_file_id": self.input_file_id,
                "completion_window": self.completion_window, "status": self.status, "output_file_id": self.output_file_id,
                "error_file_id": self.error_file_id, "created_at": self.created_at, "expires_at": self.created_at + DAY,
                **{k: self.at.get(k) for k in TIMESTAMPS},
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "metadata": self.metadata, "model": self.model, "usage": self.usage}


def _error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _batch_error(code: str, message: str, param: str | None = None, line: int | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {name: (filename or None, bytes)}."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not m:
        raise APIError(400, f"expected a multipart/form-data body with a boundary, got Content-Type {content_type!r}")
    fields = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next((ln for ln in head.decode("utf-8", "replace").split("\r\n") if ln.lower().startswith("content-disposition")), "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, content.removesuffix(b"\r\n"))
    return fields


class BatchStandin:
    """The server, its worker, its recorded calls and its state; use as a context manager (``with BatchStandin(upstream) as api``)."""

    def __init__(self, upstream_base_url: str | None = None, *, api_key: str | None = None, upstream_api_key: str | None = None,
                 max_file_bytes: int = BATCH_FILE_LIMIT, max_requests: int = MAX_REQUESTS, upstream_timeout_s: float = 600.0):
        self.upstream_base_url = upstream_base_url.rstrip("/") if upstream_base_url else None
        self.api_key, self.upstream_api_key = api_key, upstream_api_key
        self.max_file_bytes, self.max_requests = max_file_bytes, max_requests
        # faults
        self.expire_after: int | None = None
        self.fail_request: Callable[[str, dict], int | None] | None = None
        self.fail_validation = False
        self.delay_s = 0.0
        self.in_progress_floor_s = 0.0
        # records and state
        self.calls: list[Call] = []
        self.forwarded: list[Forwarded] = []
        self.unhandled: list[str] = []
        self.violations: list[str] = []
        self.worker_errors: list[str] = []
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, BatchState] = {}
        self.creations = 0
        self._lock = threading.RLock()
        self._queue: Queue[BatchState | None] = Queue()
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=upstream_timeout_s)
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # lifecycle ------------------------------------------------------------------

    def __enter__(self) -> BatchStandin:
        standin = self

        class Handler(_Handler):
            api = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._threads = [threading.Thread(target=self._server.serve_forever, name="batch-standin-http", daemon=True),
                         threading.Thread(target=self._work, name="batch-standin-worker", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._queue.put(None)
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)
        self._http.close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # for tests ------------------------------------------------------------------

    def wait(self, batch_id: str, timeout: float = 30.0, statuses: tuple[str, ...] = TERMINAL) -> BatchState:
        """Wait until the batch reaches one of ``statuses`` (without an API call) and return its state."""
        deadline = time.monotonic() + timeout
        while self.batches[batch_id].status not in statuses:
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {self.batches[batch_id].status} after {timeout} s, waiting for {statuses}")
            time.sleep(0.02)
        return self.batches[batch_id]

    def lines(self, file_id: str | None) -> list[dict]:
        return [] if file_id is None else [json.loads(ln) for ln in self.files[file_id].data.decode().splitlines()]

    # routes ---------------------------------------------------------------------

    def route(self, call: Call, body: bytes) -> tuple[int, object]:
        path = call.path
        if call.method == "POST" and path == "/v1/files":
            return self._upload(call, body)
        if m := FILE_ROUTE.match(path):
            stored = self.files.get(unquote(m.group(1)))
            if call.method == "GET" and stored is None:
                raise APIError(404, f"No such File object: {unquote(m.group(1))}", param="id")
            if call.method == "GET":
                return 200, stored.data if m.group(2) else stored.object()
        if path == "/v1/chat/completions" and call.method == "POST":  # the synchronous API at the same base URL, as at OpenAI
            return PASSTHROUGH, call.json  # forwarded by the handler once the lock is released
        if path == "/v1/batches" and call.method == "POST":
            return self._create(call.json)
        if path == "/v1/batches" and call.method == "GET":
            return self._list(call.query)
        if m := BATCH_ROUTE.match(path):
            batch = self.batches.get(unquote(m.group(1)))
            if call.method in ("GET", "POST") and batch is None:
                raise APIError(404, f"No batch found with id '{unquote(m.group(1))}'.", param="batch_id")
            if call.method == "GET" and not m.group(2):
                return 200, batch.object()
            if call.method == "POST" and m.group(2):
                return self._cancel(batch)
        self.unhandled.append(f"{call.method} {path}")
        raise APIError(404, f"Invalid URL ({call.method} {path})")

    def passthrough(self, payload: object) -> tuple[int, object]:
        """A synchronous chat completion, forwarded to the upstream as it is (no faults), outside the lock: so a
        test can run the synchronous path and batch mode against one base URL, which item keys and ids include."""
        if self.upstream_base_url is None:
            return 500, _error_body("the batch stand-in was started without an upstream_base_url")
        headers = {"Authorization": f"Bearer {self.upstream_api_key}"} if self.upstream_api_key else {}
        url = self.upstream_base_url + "/chat/completions"
        try:
            r = self._http.post(url, json=payload, headers=headers)
            return r.status_code, r.json()
        except httpx.HTTPError as exc:
            return 502, _error_body(f"the upstream at {url} could not be reached: {type(exc).__name__}: {exc}")
        except ValueError:
            return 502, _error_body(f"the upstream at {url} answered {r.status_code} with a body that is not JSON: {r.text[:200]!r}")

    def _upload(self, call: Call, body: bytes) -> tuple[int, dict]:
        fields = parse_multipart(call.headers.get("content-type", ""), body)
        call.form = {k: (v.decode("utf-8", "replace") if name is None else {"filename": name, "bytes": len(v)}) for k, (name, v) in fields.items()}
        if "file" not in fields or fields["file"][0] is None:
            raise APIError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        if "purpose" not in fields:
            raise APIError(400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode()
        if purpose != "batch":
            raise APIError(400, f"the batch stand-in only stores files of purpose 'batch', got {purpose!r}", param="purpose")
        if not filename.endswith(".jsonl"):
            raise APIError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        if len(data) > self.max_file_bytes:
            raise APIError(413, f"File is too large: {len(data)} bytes. Files for the Batch API may be at most {self.max_file_bytes} bytes.", param="file", code="file_too_large")
        stored = self._store(filename, "batch", data)
        return 200, stored.object()

    def _store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(f"file-{secrets.token_hex(11)}", filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def _create(self, payload: object) -> tuple[int, dict]:
        if not isinstance(payload, dict):
            raise APIError(400, "We could not parse the JSON body of your request. The body must be a JSON object.")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in payload:
                raise APIError(400, f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
        if payload["completion_window"] != "24h":
            raise APIError(400, f"Invalid value: '{payload['completion_window']}'. Supported values are: '24h'.", param="completion_window", code="invalid_value")
        if payload["endpoint"] not in ENDPOINTS:
            supported = ", ".join(f"'{e}'" for e in ENDPOINTS)
            raise APIError(400, f"Invalid value: '{payload['endpoint']}'. Supported values are: {supported}.", param="endpoint", code="invalid_value")
        metadata = payload.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or any(not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise APIError(400, "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 characters.", param="metadata")
        stored = self.files.get(payload["input_file_id"])
        if stored is None:
            raise APIError(404, f"No such File object: {payload['input_file_id']}", param="input_file_id")
        if stored.purpose != "batch":
            raise APIError(400, f"The input file {stored.id} must have purpose 'batch', not '{stored.purpose}'.", param="input_file_id")
        batch = BatchState(f"batch_{secrets.token_hex(16)}", stored.id, payload["endpoint"], "24h", metadata, int(time.time()))
        self.batches[batch.id] = batch
        self.creations += 1
        self._queue.put(batch)
        return 200, batch.object()

    def _cancel(self, batch: BatchState) -> tuple[int, dict]:
        if batch.status in ("validating", "in_progress"):
            batch.status, batch.at["cancelling_at"] = "cancelling", int(time.time())
            batch.cancel.set()
            answer = batch.object()
            if not batch.started:  # still queued: nothing to wind down
                self._end(batch, "cancelled")
            return 200, answer
        if batch.status == "cancelling":
            return 200, batch.object()
        raise APIError(400, f"Cannot cancel a batch with status '{batch.status}'.", param="batch_id")

    def _list(self, query: dict) -> tuple[int, dict]:
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            raise APIError(400, f"Invalid 'limit': expected an integer, got {query['limit']!r}.", param="limit") from None
        if not 1 <= limit <= 100:
            raise APIError(400, f"Invalid 'limit': {limit}. It must be between 1 and 100.", param="limit", code="invalid_value")
        ordered = list(reversed(self.batches.values()))  # newest first
        start = 0
        if "after" in query:
            ids = [b.id for b in ordered]
            start = ids.index(query["after"]) + 1 if query["after"] in ids else len(ids)
        page = ordered[start : start + limit]
        return 200, {"object": "list", "data": [b.object() for b in page], "first_id": page[0].id if page else None,
                     "last_id": page[-1].id if page else None, "has_more": start + limit < len(ordered)}

    # the worker -----------------------------------------------------------------

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            with self._lock:
                if batch.status in TERMINAL:  # cancelled while queued
                    continue
                batch.started = True
            try:
                self._run(batch)
            except Exception as exc:  # a stand-in bug: fail the batch loudly rather than leave it in_progress
                self.worker_errors.append(f"{batch.id}: {type(exc).__name__}: {exc}")
                with self._lock:
                    batch.errors = {"object": "list", "data": [_batch_error("standin_error", f"batch stand-in bug: {exc!r}")]}
                    self._end(batch, "failed")

    def _run(self, batch: BatchState) -> None:
        requests, errors, model = self._validate(batch)
        with self._lock:
            if batch.cancel.is_set():
                return self._end(batch, "cancelled")
            if errors:
                batch.errors = {"object": "list", "data": errors}
                return self._end(batch, "failed")
            batch.status, batch.at["in_progress_at"], batch.total, batch.model = "in_progress", int(time.time()), len(requests), model
        began = time.monotonic()
        done = 0
        for req in requests:
            if self._stop.is_set():
                return
            if batch.cancel.is_set() or (self.expire_after is not None and done >= self.expire_after):
                break
            if self.delay_s and self._pause(batch, self.delay_s):
                break
            line, ok, usage = self._execute(batch, req)
            with self._lock:
                (batch.output_lines if ok else batch.error_lines).append(line)
                batch.completed, batch.failed = batch.completed + ok, batch.failed + (not ok)
                batch.usage = _add_usage(batch.usage, usage)
            done += 1
        floor_left = self.in_progress_floor_s - (time.monotonic() - began)
        if floor_left > 0 and not batch.cancel.is_set():
            self._pause(batch, floor_left)
        if self._stop.is_set():
            return
        with self._lock:
            if batch.cancel.is_set():
                return self._end(batch, "cancelled")
            if done < len(requests):
                for req in requests[done:]:
                    batch.error_lines.append({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": req["custom_id"], "response": None,
                                              "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}})
                batch.failed += len(requests) - done
                return self._end(batch, "expired")
            batch.status, batch.at["finalizing_at"] = "finalizing", int(time.time())
            self._end(batch, "completed")

    def _pause(self, batch: BatchState, seconds: float) -> bool:
        """Sleep, cut short by a cancel or by the stand-in stopping; True when cut short."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if batch.cancel.wait(min(left, 0.05)) or self._stop.is_set():
                return True
        return False

    def _end(self, batch: BatchState, status: str) -> None:
        """Write the output and error files (none when empty) and set the terminal status and its timestamp."""
        with self._lock:
            if status != "failed":
                if batch.output_lines:
                    batch.output_file_id = self._store(f"{batch.id}_output.jsonl", "batch_output", _jsonl(batch.output_lines)).id
                if batch.error_lines:
                    batch.error_file_id = self._store(f"{batch.id}_error.jsonl", "batch_output", _jsonl(batch.error_lines)).id
                batch.usage = batch.usage or _add_usage(None, None)
            batch.status, batch.at[f"{status}_at"] = status, int(time.time())

    def _validate(self, batch: BatchState) -> tuple[list[dict], list[dict], str | None]:
        if self.fail_validation:
            return [], [_batch_error("injected_validation_failure", "batch stand-in: validation failure injected by the test (fail_validation=True)")], None
        raw_lines = [(n, ln) for n, ln in enumerate(self.files[batch.input_file_id].data.split(b"\n"), 1) if ln.strip()]
        if not raw_lines:
            return [], [_batch_error("empty_file", "The batch input file is empty. Please ensure that the batch contains at least one request.")], None
        if len(raw_lines) > self.max_requests:
            return [], [_batch_error("too_many_tasks", f"The batch input file contains {len(raw_lines)} requests, more than the maximum of {self.max_requests}.")], None
        requests, errors, seen, model = [], [], set(), None
        for n, raw in raw_lines:
            try:
                req = json.loads(raw)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                errors.append(_batch_error("invalid_json_line", "This line is not parseable as valid JSON.", line=n))
                continue
            missing = [k for k in ("custom_id", "method", "url", "body") if k not in req]
            if missing:
                errors += [_batch_error("missing_required_parameter", f"Missing required parameter: '{k}'.", k, n) for k in missing]
            elif not isinstance(req["custom_id"], str) or not isinstance(req["body"], dict):
                errors.append(_batch_error("invalid_value", "custom_id must be a string and body a JSON object.", "custom_id" if not isinstance(req["custom_id"], str) else "body", n))
            elif req["method"] != "POST":
                errors.append(_batch_error("invalid_value", f"Invalid value: '{req['method']}'. Supported values are: 'POST'.", "method", n))
            elif req["url"] != batch.endpoint:
                errors.append(_batch_error("url_mismatch", f"The url '{req['url']}' does not match the batch endpoint '{batch.endpoint}'.", "url", n))
            elif req["custom_id"] in seen:
                errors.append(_batch_error("duplicate_custom_id", "The custom_id for this request is a duplicate of another request. "
                                           "The custom_id parameter must be unique for each request in a batch.", "custom_id", n))
            elif model is not None and req["body"].get("model") != model:
                errors.append(_batch_error("model_mismatch", f"The model '{req['body'].get('model')}' differs from '{model}' used by the batch's other requests; "
                                           "a batch may only hold requests for one model.", "body.model", n))
            else:
                seen.add(req["custom_id"])
                model = model or req["body"].get("model")
                requests.append(req)
        return requests, errors, model

    def _execute(self, batch: BatchState, req: dict) -> tuple[dict, bool, dict | None]:
        custom_id, body = req["custom_id"], req["body"]
        hook = self.fail_request
        status = hook(custom_id, body) if hook else None
        injected = status is not None
        if injected:
            answer = _error_body(f"The server had an error while processing your request (injected by the batch stand-in: fail_request answered {status}).")
        elif self.upstream_base_url is None:
            status, answer = 500, _error_body("the batch stand-in was started without an upstream_base_url")
        else:
            url = self.upstream_base_url + req["url"].removeprefix("/v1")
            headers = {"Authorization": f"Bearer {self.upstream_api_key}"} if self.upstream_api_key else {}
            try:
                r = self._http.post(url, json=body, headers=headers)
                status = r.status_code
                answer = r.json()
            except httpx.HTTPError as exc:
                status, answer = 500, _error_body(f"the upstream at {url} could not be reached: {type(exc).__name__}: {exc}")
            except ValueError:
                status, answer = 500, _error_body(f"the upstream at {url} answered {status} with a body that is not JSON: {r.text[:200]!r}")
        with self._lock:
            self.forwarded.append(Forwarded(batch.id, custom_id, status, injected, time.time()))
        line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                "response": {"status_code": status, "request_id": secrets.token_hex(16), "body": answer}, "error": None}
        ok = 200 <= status < 300
        return line, ok, answer.get("usage") if ok and isinstance(answer, dict) else None


def _jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(ln) + "\n" for ln in lines).encode()


def _add_usage(total: dict | None, usage: dict | None) -> dict:
    """The Batch ``usage`` object (types/batch_usage.py) plus one chat completion's usage."""
    total = total or {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}
    if usage:
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        total["input_tokens"] += prompt
        total["output_tokens"] += completion
        total["total_tokens"] += usage.get("total_tokens") or prompt + completion
        total["input_tokens_details"]["cached_tokens"] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        total["output_tokens_details"]["reasoning_tokens"] += (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return total


class _Handler(StandinHandler):
    api: BatchStandin

    def _handle(self) -> None:
        api = self.api
        body = self._body()
        url = urlsplit(self.path)
        auth = self.headers.get("Authorization")
        headers = {k.lower(): ("[redacted]" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        call = Call(self.command, url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}, headers, time.time())
        key = api.api_key
        if key and (key in unquote(self.path) or key.encode() in body or any(key in v for k, v in headers.items())):
            api.violations.append(f"{self.command} {url.path}: the API key is outside the Authorization header")
        with api._lock:
            api.calls.append(call)
            try:
                if not auth or not auth.startswith("Bearer "):
                    raise APIError(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.")
                if key and auth != f"Bearer {key}":
                    raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
                if "json" in headers.get("content-type", "") and body:
                    call.json = json.loads(body)
                status, payload = api.route(call, body)
            except APIError as exc:
                status, payload = exc.status, exc.body
            except (KeyError, TypeError, ValueError) as exc:  # a malformed request, not a stand-in crash
                status, payload = 400, {"error": {"message": f"malformed request: {type(exc).__name__}: {exc}", "type": "invalid_request_error", "param": None, "code": None}}
        if status == PASSTHROUGH:
            status, payload = api.passthrough(payload)
        call.status = status
        data, ctype = (payload, "application/octet-stream") if isinstance(payload, bytes) else (json.dumps(payload).encode(), "application/json")
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{secrets.token_hex(16)}")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed while we answered
            self.close_connection = True

    do_GET = do_POST = do_DELETE = _handle
