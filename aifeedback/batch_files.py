"""Batch mode's files in the run store (``RUN/batch_api/STAGE/``) and the one reader of batch result lines.

A request file ``ID.requests.jsonl`` holds batch JSONL lines (``custom_id``, ``method``, ``url``, ``body``);
its record ``ID.json`` holds the batch id once there is one, the custom ids with their bodies' digests,
the status and counts; a finished batch's ``BATCHID.output.jsonl`` and ``BATCHID.errors.jsonl`` sit beside
it, as do output files imported from elsewhere (``import-HASH.output.jsonl``). :func:`read_result_line`
reads a line of the OpenAI Batch API's output and error files and of ``vllm run-batch`` output alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendError, ConfigError, InputError
from .records import content_json

log = logging.getLogger("aifeedback.batch")

BATCH_DIR = "batch_api"
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"  # the only window the Batch API accepts; requests not done by then come back expired
# a batch in one of these will not change any more; its output and error files are saved
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
# statuses of a record before its batch exists at the endpoint
WRITTEN, UPLOADED, IMPORTED = "written", "uploaded", "imported"


class BatchAPIError(BackendError):
    """The Batch API refused or lost something this run recorded (one line, naming the fix)."""


def body_digest(body: dict) -> str:
    return hashlib.sha256(content_json(body).encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint made of one request: its reply body (as the synchronous path gets it) or an error."""

    body: dict | None
    error: str | None
    batch_id: str


# --- result lines: one parser for the API's files, hand-downloaded files and vllm run-batch -----------------


def read_result_line(obj: Any, batch_id: str) -> tuple[str, Answer]:
    """(custom_id, Answer) of one line of a batch output or error file (OpenAI's and vllm run-batch's shape)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("not a batch result line: it needs a string custom_id")
    cid = obj["custom_id"]
    resp, err = obj.get("response"), obj.get("error")
    if isinstance(resp, dict) and "status_code" not in resp and resp.get("choices"):  # a completion written as the response itself
        resp = {"status_code": 200, "body": resp}
    if isinstance(resp, dict):
        status, body = resp.get("status_code"), resp.get("body")
        if status == 200 and isinstance(body, dict) and body.get("choices"):
            return cid, Answer(body, None, batch_id)
        msg = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else str(body)[:300]
        return cid, Answer(None, f"batch {batch_id}: HTTP {status}: {msg}", batch_id)
    if isinstance(err, dict):
        return cid, Answer(None, f"batch {batch_id}: {err.get('code')}: {err.get('message')}", batch_id)
    return cid, Answer(None, f"batch {batch_id}: a result line with neither response nor error", batch_id)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {n} is not JSON ({exc.msg}); a batch output file has one JSON object a line") from None


# --- the run's batch records ----------------------------------------------------------------------------------


def _atomic_write(dest: Path, text: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


class BatchBook:
    """``RUN/batch_api/STAGE/``: per request file ``ID.requests.jsonl`` and its record ``ID.json`` (batch id,
    custom ids and body digests, status, counts), and each finished batch's ``BATCHID.output.jsonl`` /
    ``BATCHID.errors.jsonl``."""

    def __init__(self, run_root: str | Path, stage: str):
        self.root = Path(run_root)
        self.dir = self.root / BATCH_DIR / stage
        self.stage = stage

    def records(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        recs = []
        for p in self.dir.glob("*.json"):
            try:
                recs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{p} is not a batch record ({exc}); it was written by aifeedback's batch mode: restore it, or delete it and its .requests.jsonl to send those requests again") from None
        return sorted(recs, key=lambda r: (r["created"], r["id"]))

    def save(self, rec: dict) -> None:
        rec["updated"] = time.time()
        _atomic_write(self.dir / f"{rec['id']}.json", json.dumps(rec, indent=1, sort_keys=True))

    def requests_path(self, rec: dict) -> Path:
        return self.dir / f"{rec['id']}.requests.jsonl"

    def result_paths(self, rec: dict) -> list[Path]:
        return [self.dir / name for name in rec.get("result_files", [])]

    def answers(self) -> tuple[dict[str, Answer], dict[str, str]]:
        """(custom id -> its latest answer, custom id -> the digest of the body it answers). A consumed record's
        errors are left out: those requests are sent again."""
        answers: dict[str, Answer] = {}
        digests: dict[str, str] = {}
        for rec in self.records():
            finished = rec["status"] in TERMINAL or rec["status"] == IMPORTED
            if not finished:
                continue
            got: dict[str, Answer] = {}
            for path in self.result_paths(rec):
                for _, obj in iter_jsonl(path):
                    cid, a = read_result_line(obj, rec.get("batch_id") or rec["id"])
                    if cid in rec["digests"]:
                        got[cid] = a
            if rec["status"] != IMPORTED:  # a request the batch never ran (expired, cancelled, failed validation)
                why = rec.get("status_detail") or rec["status"]
                for cid in rec["digests"]:
                    got.setdefault(cid, Answer(None, f"batch {rec['batch_id']}: {why}", rec["batch_id"]))
            for cid, a in got.items():
                if a.error is not None and rec.get("consumed"):
                    continue
                answers[cid], digests[cid] = a, rec["digests"][cid]
        return answers, digests

    def open_ids(self, include_files: bool) -> set[str]:
        """Custom ids of requests in a batch still running (and, with ``include_files``, in files written and not yet imported)."""
        out: set[str] = set()
        for rec in self.records():
            if rec["status"] in OPEN or rec["status"] == UPLOADED or (include_files and rec["status"] == WRITTEN):
                out.update(rec["digests"])
        return out

    def mark_consumed(self, ids: Iterable[str]) -> None:
        for rec in self.records():
            if rec["id"] in ids and not rec.get("consumed"):
                rec["consumed"] = True
                self.save(rec)

    def write_requests(self, missing: dict[str, dict], max_requests: int, max_bytes: int, backend: dict) -> list[dict]:
        """Cut the missing requests into files within the limits; write each file and its record. Returns the records."""
        if max_requests < 1 or max_bytes < 1:
            raise ConfigError(f"batch limits must be positive (batch_max_requests={max_requests}, batch_max_bytes={max_bytes})")
        recs, lines, digests, size = [], [], {}, 0

        def flush() -> None:
            nonlocal lines, digests, size
            if not lines:
                return
            blob = "".join(lines).encode("utf-8")
            rid = hashlib.sha256(blob).hexdigest()[:16]
            rec = {"id": rid, "stage": self.stage, "created": time.time(), "status": WRITTEN, "n_requests": len(lines), "bytes": len(blob), "digests": digests, "backend": backend, "batch_id": None, "input_file_id": None, "result_files": [], "request_counts": None, "consumed": False}
            path = self.requests_path(rec)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            self.save(rec)
            recs.append(rec)
            lines, digests, size = [], {}, 0

        for cid, body in missing.items():
            line = json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False) + "\n"
            n = len(line.encode("utf-8"))
            if n > max_bytes:
                raise ConfigError(f"one batch request ({cid}) is {n} bytes, over backend.batch_max_bytes={max_bytes}; raise batch_max_bytes (the OpenAI limit is 200 MB a file)")
            if lines and (len(lines) >= max_requests or size + n > max_bytes):
                flush()
            lines.append(line)
            digests[cid] = body_digest(body)
            size += n
        flush()
        return recs

    def summary(self) -> dict:
        """Batches by state, with their request counts (for ``aifeedback runs``)."""
        out: dict[str, dict] = {}
        for rec in self.records():
            state = {"written": "file written", "uploaded": "pending", "imported": "imported"}.get(rec["status"], "pending" if rec["status"] in OPEN else rec["status"])
            s = out.setdefault(state, {"batches": 0, "requests": 0, "failed_requests": 0})
            s["batches"] += 1
            s["requests"] += rec["n_requests"]
            s["failed_requests"] += int((rec.get("request_counts") or {}).get("failed") or 0)
        return out


def stages_with_batches(run_root: str | Path) -> list[str]:
    d = Path(run_root) / BATCH_DIR
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


# --- import of output files run elsewhere ----------------------------------------------------------------------


def import_outputs(run_root: str | Path, paths: list[str | Path]) -> dict[str, dict]:
    """Read batch output files (the API's, downloaded by hand, or ``vllm run-batch -o``) into the run's records.

    Every line's custom id must belong to a request file of this run; a file none of whose ids
    does is refused. Returns, per stage, the requests answered and the files read.
    """
    owner: dict[str, tuple[BatchBook, str]] = {}  # custom id -> (its stage's book, its request file's record id)
    for stage in stages_with_batches(run_root):
        book = BatchBook(run_root, stage)
        for rec in book.records():
            for cid in rec["digests"]:
                owner[cid] = (book, rec["id"])
    if not owner:
        raise InputError(f"{run_root} has no batch request files; write them first with the stage's --batch-file-only")
    out: dict[str, dict] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"{p}: no such file; pass the output files of the batch (e.g. vllm run-batch -o FILE)")
        blob = p.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        by_rec: dict[str, list[int]] = {}
        unknown = []
        for n, obj in iter_jsonl(p):
            try:
                cid, _ = read_result_line(obj, "import")
            except ValueError as exc:
                raise InputError(f"{p} line {n}: {exc}; a batch output line is {{custom_id, response: {{status_code, body}}, error}}") from None
            if cid not in owner:
                unknown.append(cid)
                continue
            by_rec.setdefault(owner[cid][1], []).append(n)
        if not by_rec:
            raise InputError(f"{p}: none of its {len(unknown)} custom ids (e.g. {unknown[:1]}) belongs to a request file of {run_root}; is it the output of another run's requests?")
        books = {rid: book for book, rid in owner.values()}
        for rid in by_rec:
            book = books[rid]
            rec = json.loads((book.dir / f"{rid}.json").read_text())
            name = f"import-{digest}.output.jsonl"
            if not (book.dir / name).is_file():
                _atomic_write(book.dir / name, blob.decode("utf-8"))
            if name not in rec["result_files"]:
                rec["result_files"].append(name)
            rec.update(status=IMPORTED, batch_id=rec.get("batch_id") or f"import-{digest}")
            book.save(rec)
            s = out.setdefault(book.stage, {"answered": 0, "files": []})
            s["answered"] += len(by_rec[rid])
            if str(p) not in s["files"]:
                s["files"].append(str(p))
        if unknown:
            log.warning("%s: %d lines name no request of this run (e.g. %s); they were ignored", p, len(unknown), unknown[0])
    return out
