"""The run store: one directory per run, Parquet shards per stage, content-addressed batches.

Layout::

    RUN/
      history.jsonl                   # one line per stage invocation (counts, batches computed, model calls, times)
      STAGE/
        KEY.parquet                   # rows of one batch (its presence marks the batch done)
        KEY.excluded.parquet          # exclusion rows of that batch (written first)
        _manifest.json                # keys of the latest completed run of the stage, config, counts

A batch key hashes the input ids, the stage config, the model id and the
template version, so a config change recomputes exactly the batches it touches
and a re-run after a crash recomputes only the missing ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import AIFeedbackError
from .records import EXCLUSIONS


class StoreError(AIFeedbackError):
    pass


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table, column by column (about 3x faster than ``from_pylist`` for nested columns)."""
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def batch_key(stage: str, input_ids: list[str], stage_config: Any, model_id: str, template_version: str = "") -> str:
    blob = json.dumps(
        {"stage": stage, "ids": list(input_ids), "config": stage_config, "model": model_id, "template": template_version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class RunStore:
    def __init__(self, root: str | Path, probe: bool = True):
        self.root = Path(root).expanduser().resolve()
        if not probe:  # batch workers: the flow has probed already
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".write-probe.", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise StoreError(f"run directory {self.root} is not writable ({exc.strerror}); pass --run-dir with a writable folder") from None

    # paths ------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def shard_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{key}.parquet"

    def excluded_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{key}.excluded.parquet"

    def has(self, stage: str, key: str) -> bool:
        return self.shard_path(stage, key).is_file()

    # writing ----------------------------------------------------------------
    def write_table(self, table: pa.Table, dest: str | Path) -> Path:
        """Write any derived table (rankings, SFT sets...) atomically: a crash leaves the old file or none."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write_table(table, dest)
        return dest

    def _atomic_write_table(self, table: pa.Table, dest: Path) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, dest)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"the run store at {self.root} is full ({exc.strerror}); free disk space or pass --run-dir on another disk, then re-run: finished batches are kept") from None
            raise StoreError(f"could not write {dest}: {exc}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_batch(self, stage: str, key: str, rows: list[dict], schema: pa.Schema, excluded: list[dict] | None = None) -> None:
        """Write one batch atomically: exclusions first, then rows (whose file marks the batch done)."""
        ex = [dict(e, batch_key=key) for e in (excluded or [])]
        self._atomic_write_table(_table(ex, EXCLUSIONS), self.excluded_path(stage, key))
        self._atomic_write_table(_table(rows, schema), self.shard_path(stage, key))

    def write_json(self, name: str, data: dict) -> Path:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, dest)
        return dest

    def append_history(self, entry: dict) -> None:
        """One JSON line per stage invocation in ``history.jsonl``: what ran, what it computed, how long it took."""
        with open(self.root / "history.jsonl", "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def write_manifest(self, stage: str, keys: list[str], info: dict) -> Path:
        return self.write_json(f"{stage}/_manifest.json", {"stage": stage, "keys": list(keys), **info})

    # reading ----------------------------------------------------------------
    def manifest(self, stage: str) -> dict:
        path = self.root / stage / "_manifest.json"
        if not path.is_file():
            raise StoreError(f"stage {stage!r} has not completed in run {self.root}; run `aifeedback {stage}` first (or pass the right --run-dir)")
        return json.loads(path.read_text())

    def keys(self, stage: str) -> list[str]:
        return list(self.manifest(stage)["keys"])

    def iter_tables(self, stage: str, excluded: bool = False, keys: list[str] | None = None) -> Iterator[pa.Table]:
        """Stream the stage's shards one at a time (the latest completed run's keys by default)."""
        for key in keys if keys is not None else self.keys(stage):
            path = self.excluded_path(stage, key) if excluded else self.shard_path(stage, key)
            if not path.is_file():
                raise StoreError(f"shard {path} listed in the manifest is missing; re-run `aifeedback {stage}` to recompute it")
            yield pq.read_table(path)

    def read_table(self, stage: str, excluded: bool = False, keys: list[str] | None = None) -> pa.Table:
        tables = list(self.iter_tables(stage, excluded=excluded, keys=keys))
        if not tables:
            schema = EXCLUSIONS if excluded else None
            if schema is None:
                raise StoreError(f"stage {stage!r} has no shards in {self.root}")
            return schema.empty_table()
        return pa.concat_tables(tables)

    def dataset(self, stage: str, excluded: bool = False):
        """The stage as a ``datasets.Dataset``."""
        import datasets

        return datasets.Dataset(self.read_table(stage, excluded=excluded))

    def counts(self, stage: str) -> dict:
        m = self.manifest(stage)
        return {k: m[k] for k in ("n_in", "n_out", "n_excluded") if k in m}
