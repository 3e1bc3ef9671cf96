"""Batch mode: a stage's requests through an OpenAI-compatible Batch API, or through batch files run elsewhere.

``backend.batch`` (openai backend) sends the same chat-completion requests the
synchronous path sends, as batch JSONL (``custom_id``, ``method``, ``url``, ``body``),
split at ``batch_max_requests`` and ``batch_max_bytes``, uploaded with the official
client (``files.create(purpose="batch")``) and run as batches with a 24 h window.
``backend.batch_file_only`` writes the files and stops, for ``vllm run-batch`` or an
upload by hand; ``aifeedback import-batch-output`` reads their output files back.

How a stage runs (:func:`run_batched`, called by the stage driver):

1. Each item of each stage batch is computed on its own, by the stage's own code
   (``job.compute([item])``), with the backend answering from the results in hand
   (:class:`Replay`). The backend parses an answer exactly as it parses a synchronous
   reply (``OpenAIBackend._send`` is the one switch), so rows are the same. A request
   with no answer yet is collected under its ``custom_id``, ``ITEMKEY:TAG``: the
   item's content key and the request's place in it (``AB``/``BA``, the order shown,
   for labels; ``s0``... for samples; ``r0``... otherwise). Items that still miss an
   answer are dropped from this pass, so a stage whose requests depend on earlier
   answers (critique, then revision) needs one batch round per step.
2. Missing requests that no open batch holds are written to files, uploaded and
   created as batches, and each batch's id and custom ids are recorded in
   ``RUN/batch_api/STAGE/`` *before* polling: a re-run or a crash during polling polls
   the recorded batches again and never resubmits. A batch created whose record was
   not yet written (a kill in between) is found again by its input file id.
3. Open batches are polled every ``batch_poll_s``; a finished one's output and error
   files are saved beside its record. Then step 1 again, until no request is missing.
   A stage batch is written (its shard, usage, exclusions) as soon as all its items
   have answers; rows and exclusions record ``batch_id``.

Failed requests, requests of a batch that expired, was cancelled or failed validation
become ``backend_error`` exclusions naming the batch; after the pass their records are
marked ``consumed``, so the next run sends those requests again (a successful answer is
kept for good). Items in a finished shard are never sent again.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from .batch_files import COMPLETION_WINDOW, ENDPOINT, IMPORTED, OPEN, TERMINAL, UPLOADED, WRITTEN, Answer, BatchAPIError, BatchBook, _atomic_write, body_digest, stages_with_batches
from .replay import replaying

log = logging.getLogger("aifeedback.batch")

# --- replay: answering a stage's requests from the results in hand ------------------------------------------


class ItemReplay:
    """The requests of one item: each gets ``ITEMKEY:TAG`` and, when there is one, its answer."""

    __slots__ = ("replay", "key", "tags", "missing", "batch_ids")

    def __init__(self, replay: "Replay", key: str):
        self.replay, self.key = replay, key
        self.tags: dict[str, int] = {}
        self.missing = 0
        self.batch_ids: set[str] = set()

    def custom_id(self, tag: str | None) -> str:
        tag = tag or f"r{sum(self.tags.values())}"
        n = self.tags.get(tag, 0)
        self.tags[tag] = n + 1
        return f"{self.key}:{tag}" if n == 0 else f"{self.key}:{tag}~{n}"

    def send(self, bodies: list[dict], tags: list[str] | None = None) -> list[tuple[Any, str | None, int]]:
        """The backend's replies to ``bodies``, as ``OpenAIBackend._send`` returns them: (body, error, retries)."""
        out = []
        for i, body in enumerate(bodies):
            cid = self.custom_id(tags[i] if tags else None)
            a = self.replay.answers.get(cid)
            if a is not None and self.replay.digests.get(cid, body_digest(body)) != body_digest(body):
                a = None  # an answer to another request under this id (a changed file): ask again
            if a is None:
                self.missing += 1
                self.replay.missing[cid] = body
                out.append((None, "waiting for a batch result", 0))
                continue
            self.batch_ids.add(a.batch_id)
            out.append((a.body, a.error, 0))
        return out


class Replay:
    """Answers by custom id, and the requests found missing."""

    def __init__(self, answers: dict[str, Answer], digests: dict[str, str]):
        self.answers, self.digests = answers, digests
        self.missing: dict[str, dict] = {}

    def item(self, key: str):
        """``with replay.item(key) as it:`` the openai backend answers this item's requests from ``answers``."""
        return replaying(ItemReplay(self, key))


# --- the endpoint ---------------------------------------------------------------------------------------------


def make_client(cfg: Any):
    """The official synchronous client for the backend's endpoint (key from the environment only)."""
    import openai

    from .backends.openai_compat import NO_KEY, check_key_transport

    key = os.environ.get(cfg.api_key_env)
    check_key_transport(cfg, key)
    return openai.OpenAI(api_key=key or NO_KEY, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=cfg.max_retries)


def _unknown(rec: dict, book: BatchBook, base_url: str, exc: Exception) -> BatchAPIError:
    return BatchAPIError(
        f"batch {rec.get('batch_id')} recorded in {book.dir / (rec['id'] + '.json')} is unknown to {base_url} ({exc}); "
        f"if it was created at another endpoint, set backend.base_url to that one; to send its requests again, delete that record"
    )


def submit(client: Any, book: BatchBook, rec: dict, cfg: Any, run_root: Path) -> None:
    """Upload a written request file and create its batch, recording each step before the next."""
    import openai

    if rec["status"] == WRITTEN:
        try:
            with open(book.requests_path(rec), "rb") as fh:
                f = client.files.create(file=(f"{rec['id']}.jsonl", fh), purpose="batch")
        except openai.APIStatusError as exc:
            hint = " (the file is over the endpoint's size limit: lower backend.batch_max_bytes)" if exc.status_code == 413 else ""
            raise BatchAPIError(f"{cfg.base_url} refused the batch file {book.requests_path(rec)} ({rec['bytes']} bytes, {rec['n_requests']} requests): HTTP {exc.status_code}{hint}: {str(exc)[:300]}") from None
        rec.update(status=UPLOADED, input_file_id=f.id)
        book.save(rec)
    if rec["status"] == UPLOADED:
        found = _find_created(client, rec["input_file_id"])  # created before a kill, and not yet recorded
        if found is None:
            try:
                found = client.batches.create(input_file_id=rec["input_file_id"], endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW, metadata={"aifeedback_run": run_root.name[:64], "aifeedback_file": rec["id"]})
            except openai.APIStatusError as exc:
                raise BatchAPIError(f"{cfg.base_url} refused to create a batch from {rec['input_file_id']} ({book.requests_path(rec)}): HTTP {exc.status_code}: {str(exc)[:300]}") from None
        rec.update(batch_id=found.id, status=found.status)
        book.save(rec)
        log.info("%s: batch %s created: %d requests, %d bytes", book.stage, found.id, rec["n_requests"], rec["bytes"])


def _find_created(client: Any, input_file_id: str) -> Any | None:
    for b in client.batches.list(limit=100):
        if b.input_file_id == input_file_id:
            return b
    return None


def refresh(client: Any, book: BatchBook, base_url: str) -> int:
    """Poll the open batches once; save a finished one's files, then its record. Returns how many are still open."""
    import openai

    still = 0
    for rec in book.records():
        if rec["status"] not in OPEN:
            continue
        try:
            b = client.batches.retrieve(rec["batch_id"])
        except openai.NotFoundError as exc:
            raise _unknown(rec, book, base_url, exc) from None
        counts = b.request_counts.model_dump() if b.request_counts else None
        if b.status not in TERMINAL:
            if b.status != rec["status"] or counts != rec.get("request_counts"):
                rec.update(status=b.status, request_counts=counts)
                book.save(rec)
            still += 1
            continue
        files = []
        for kind, fid in (("output", b.output_file_id), ("errors", b.error_file_id)):
            if fid:
                dest = book.dir / f"{b.id}.{kind}.jsonl"
                _atomic_write(dest, client.files.content(fid).text)
                files.append(dest.name)
        detail = None
        if b.status == "failed" and b.errors and b.errors.data:
            detail = "failed validation: " + "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in b.errors.data[:3])
        elif b.status in ("expired", "cancelled"):
            detail = f"{b.status} before this request ran"
        rec.update(status=b.status, request_counts=counts, result_files=files, status_detail=detail)
        book.save(rec)
        log.info("%s: batch %s %s: %s", book.stage, b.id, b.status, counts)
    return still


def cancel(run_root: str | Path, cfg: Any | None = None) -> list[tuple[str, str]]:
    """Cancel every open batch of the run. Returns (batch id, status after) per batch."""
    import openai

    from .backend_config import OpenAIBackendConfig

    out = []
    for stage in stages_with_batches(run_root):
        book = BatchBook(run_root, stage)
        for rec in book.records():
            if rec["status"] not in OPEN:
                continue
            bcfg = cfg or OpenAIBackendConfig(**rec["backend"])
            client = make_client(bcfg)
            try:
                b = client.batches.cancel(rec["batch_id"])
            except openai.NotFoundError as exc:
                raise _unknown(rec, book, bcfg.base_url, exc) from None
            rec.update(status=b.status)
            book.save(rec)
            out.append((rec["batch_id"], b.status))
    return out


# --- the driver's part -----------------------------------------------------------------------------------------


def replay_batches(store: Any, job: Any, batches: list[Any], replay: Replay) -> list[Any]:
    """Write every stage batch whose items all have answers; returns their BatchResults."""
    from . import usage
    from .batches import finish_batch

    done = []
    for b in batches:
        if store.has(job.stage, b.key):
            continue
        t0 = time.perf_counter()
        parts, excluded, stats, ids = [], [], {}, {}
        total = usage.Meter()
        complete = True
        for item, key in zip(b.items, b.item_keys):
            with replay.item(key) as it, usage.meter() as m:
                rows, ex, st = job.compute([item], b.key)
            if it.missing:
                complete = False
                continue
            parts.append(rows)
            excluded.extend(ex)
            for k, v in st.items():
                if isinstance(v, (int, float)):
                    stats[k] = stats.get(k, 0) + v
            ids[job.item_id(item)] = ",".join(sorted(it.batch_ids)) or None
            for k in usage.TOKEN_KEYS:
                setattr(total, k, getattr(total, k) + getattr(m, k))
            total.exact = total.exact and m.exact
        if not complete:
            continue
        done.append(finish_batch(str(store.root), job, b, _concat(parts), excluded, stats, total, t0, batch_ids=ids))
    return done


def _concat(parts: list[Any]) -> Any:
    import pyarrow as pa

    if parts and isinstance(parts[0], pa.Table):
        return pa.concat_tables(parts)
    return [r for p in parts for r in p]


def run_batched(store: Any, job: Any, batches: list[Any], cfg: Any, lg: Any = log) -> tuple[list[Any], dict]:
    """Run the stage batches through batch files: submit, record, poll, replay, until every item has an answer
    (or, with ``batch_file_only``, until the request files are written). Returns (BatchResults, batch info)."""
    book = BatchBook(store.root, job.stage)
    file_only = bool(cfg.batch_file_only)
    client = None
    results: list[Any] = []
    created: list[str] = []
    polls = 0
    while True:
        if book.open_ids(include_files=False):
            client = client or make_client(cfg)
            polls += 1
            refresh(client, book, cfg.base_url)
        answers, digests = book.answers()
        finished = [r["id"] for r in book.records() if r["status"] in TERMINAL or r["status"] == IMPORTED]
        replay = Replay(answers, digests)
        results += replay_batches(store, job, batches, replay)
        if not replay.missing:
            book.mark_consumed(finished)
            break
        if not file_only:
            for rec in book.records():  # written or uploaded before a crash (or written by --batch-file-only): submit it now
                if rec["status"] in (WRITTEN, UPLOADED) and not rec["digests"].keys().isdisjoint(replay.missing):
                    client = client or make_client(cfg)
                    submit(client, book, rec, cfg, store.root)
                    created.append(rec["batch_id"])
        waiting = book.open_ids(include_files=file_only)
        new = {cid: body for cid, body in replay.missing.items() if cid not in waiting}
        if new:
            backend = cfg.model_dump(mode="json", include={"kind", "model", "base_url", "api_key_env", "allow_insecure_key", "timeout_s", "max_retries"})
            recs = book.write_requests(new, cfg.batch_max_requests, cfg.batch_max_bytes, backend)
            lg.info("%s: %d requests in %d batch files (%s)", job.stage, len(new), len(recs), ", ".join(f"{r['n_requests']} requests, {r['bytes']} bytes" for r in recs))
            if not file_only:
                client = client or make_client(cfg)
                for rec in recs:
                    submit(client, book, rec, cfg, store.root)
                    created.append(rec["batch_id"])
        if file_only:
            book.mark_consumed(finished)
            files = [str(book.requests_path(r)) for r in book.records() if r["status"] == WRITTEN]
            lg.warning(
                "%s: %d requests wait in %d batch files; run them (e.g. `vllm run-batch -i FILE -o OUT --model MODEL`), then `aifeedback import-batch-output OUT... --run-dir %s`: %s",
                job.stage, len(replay.missing), len(files), store.root, " ".join(files),
            )
            break
        if not book.open_ids(include_files=False):
            raise BatchAPIError(f"{job.stage}: {len(replay.missing)} requests have no answer and no open batch holds them; see {book.dir}")
        time.sleep(cfg.batch_poll_s)
    info = {"batches_created": len(created), "batch_polls": polls, "batch_api": book.summary()}
    return results, info
