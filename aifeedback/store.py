"""The run store: one directory per run, Parquet shards per stage, content-addressed batches.

Layout::

    RUN/
      history.jsonl                   # one line per stage invocation (counts, batches computed, model calls, times)
      STAGE/
        KEY.parquet                   # rows of one batch (its presence marks the batch done)
        KEY.excluded.parquet          # exclusion rows of that batch (written first)
        _manifest.json                # keys of the latest completed run of the stage, config, counts

Reuse is per item (aifeedback/stage.py): every row and exclusion carries the
``item_key`` of its input item, a hash of the item's content, the stage's
output-affecting config, the model id and the template version. An item whose key
is in a finished shard is never computed again, whatever batch it falls in; a
batch's shard key is a hash of its item keys. When an invocation uses only some
items of an older shard, the manifest lists those shards as partial and
``_selection-HASH.parquet`` holds the item keys taken from them, so readers see exactly
this invocation's items.

A run folder may come from someone else (a shared or downloaded run): what its
manifest names is checked before anything is read. A shard key must be a plain name,
the selection must be the stage's own ``_selection-HASH.parquet``, and every file read
must resolve inside the run folder (no ``..``, absolute paths or symlinks out);
otherwise a StoreError names the run folder and the entry, and nothing is read.

Labels are stored as model outputs only; ``read_table("labels")`` adds the columns
derived from them (aifeedback/preference.py) with the run's tie_margin/temperature.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError
from .records import EXCLUSIONS, with_later_columns
from .redact import redact


# the command that writes each stage (error messages name it)
STAGE_COMMANDS = {"responses": "generate", "revisions": "revise", "labels": "label"}


# Exclusions that say nothing about the item (the endpoint failed after its retries): tried again on the next run.
RETRYABLE_REASONS = frozenset({"backend_error"})

_SHARD_FILE = re.compile(r"([0-9a-f]{24})(?:\.excluded)?\.parquet")
# A key read from a manifest names files in the stage folder, so it must be a plain name: batch_key's 24 hex
# digits (item_key's too), or another writer's token (the training loop writes "iter1-40"), never a path.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SELECTION_FILE = re.compile(r"_selection-[0-9a-f]{16}\.parquet")  # the name write_manifest gives it


def stage_command(stage: str) -> str:
    return f"aifeedback {STAGE_COMMANDS.get(stage, stage)}"


def _table(rows: list[dict] | pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows -> table, column by column (about 3x faster than ``from_pylist`` for nested columns).
    A table (rows built as columns) is put in the schema's column order."""
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(schema)
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
        path = self.shard_path(stage, key)
        return path.is_file() and self._inside(path)  # a symlink out of the run is no finished batch of it

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def _hostile(self, stage: str, problem: str) -> StoreError:
        """A manifest or file that would make a reader leave the run folder: the error names both, and nothing was read."""
        return StoreError(
            f"run folder {self.root}: {problem}; nothing outside the run was read. The folder was edited or does not come "
            f"from aifeedback: use a run it wrote, or rewrite this one with `{stage_command(stage)} --run-dir {self.root}`"
        )

    def _read_parquet(self, stage: str, path: Path, what: str) -> pa.Table:
        """A Parquet file of this run, read only if it resolves inside the run folder; any failure is a StoreError."""
        fix = f"re-run `{stage_command(stage)} --run-dir {self.root}` to recompute it"
        if not self._inside(path):
            shown = path.relative_to(self.root) if path.is_relative_to(self.root) else path
            raise self._hostile(stage, f"{what} {shown} resolves to {path.resolve()}, outside the run folder")
        if not path.is_file():
            raise StoreError(f"{what} {path} listed in the manifest is missing; {fix}")
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{what} {path} is unreadable ({exc}); delete it and {fix}") from None

    def item_index(self, stage: str) -> tuple[dict[str, str], dict[str, int]]:
        """(item key -> shard key, shard key -> number of distinct item keys in it) over every finished shard.

        Only shard files count (24 hex digits; not ``_manifest``/``_selection`` or temp files). A key
        found in two shards maps to the first; the other shard then counts as used in part.
        """
        index: dict[str, str] = {}
        sizes: dict[str, int] = {}
        d = self.root / stage
        if not d.is_dir():
            return index, sizes
        for path in sorted(d.glob("*.parquet")):
            m = _SHARD_FILE.fullmatch(path.name)
            if m is None or not self._inside(path):  # a symlink out of the run is not read
                continue
            key = m.group(1)
            if not self.has(stage, key):  # an exclusions file whose rows file never landed: a crashed batch
                continue
            try:
                pf = pq.ParquetFile(path)
                if "item_key" not in pf.schema_arrow.names:  # a shard from before item keys: not reusable
                    continue
                retry: set[str] = set()
                if path.name.endswith(".excluded.parquet"):
                    t = pf.read(columns=["item_key", "reason"])
                    keys = {k for k in t.column(0).to_pylist() if k is not None}
                    retry = {k for k, r in zip(t.column(0).to_pylist(), t.column(1).to_pylist()) if r in RETRYABLE_REASONS}
                else:
                    keys = {k for k in pf.read(columns=["item_key"]).column(0).to_pylist() if k is not None}
            except (OSError, pa.ArrowException):
                continue  # unreadable: its items are computed again
            sizes[key] = sizes.get(key, 0) + len(keys)
            for k in keys - retry:  # an item that failed for the backend's sake is tried again; its old shard then counts as partial
                index.setdefault(k, key)
        return index, sizes

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

    def write_batch(self, stage: str, key: str, rows: list[dict] | pa.Table, schema: pa.Schema, excluded: list[dict] | None = None) -> None:
        """Write one batch atomically: exclusions first, then rows (whose file marks the batch done)."""
        ex = [dict(e, batch_key=key) for e in (excluded or [])]
        self._atomic_write_table(_table(ex, EXCLUSIONS), self.excluded_path(stage, key))
        self._atomic_write_table(_table(rows, schema), self.shard_path(stage, key))

    def write_json(self, name: str, data: dict) -> Path:
        """Write ``data`` atomically, secrets redacted (aifeedback/redact.py): configs and manifests may hold a plugin backend's key."""
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(redact(data), fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, dest)
        return dest

    def append_history(self, entry: dict) -> None:
        """One JSON line per stage invocation in ``history.jsonl``: what ran, what it computed, how long it took."""
        with open(self.root / "history.jsonl", "a") as fh:
            fh.write(json.dumps(redact(entry), sort_keys=True, default=str) + "\n")

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def write_manifest(self, stage: str, keys: list[str], info: dict, selection: dict[str, list[str]] | None = None) -> Path:
        """The stage's latest completed invocation: its shards in order, and for shards it used only in part,
        the item keys it took from each (``_selection-HASH.parquet``, named in the manifest: written first,
        so a reader never pairs a manifest with another invocation's selection)."""
        d = self.root / stage
        sel_name = None
        if selection:
            shards = [s for s, ks in selection.items() for _ in ks]
            items = [k for ks in selection.values() for k in ks]
            digest = hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:16]
            sel_name = f"_selection-{digest}.parquet"
            self._atomic_write_table(pa.table({"shard": pa.array(shards, pa.string()), "item_key": pa.array(items, pa.string())}), d / sel_name)
        out = self.write_json(f"{stage}/_manifest.json", {"stage": stage, "keys": list(keys), "partial_keys": sorted(selection or {}), "selection": sel_name, **info})
        for old in d.glob("_selection*.parquet"):  # earlier invocations' selections
            if old.name != sel_name:
                old.unlink(missing_ok=True)
        return out

    # reading ----------------------------------------------------------------
    def manifest(self, stage: str) -> dict:
        path = self.root / stage / "_manifest.json"
        if not path.is_file():
            raise StoreError(f"stage {stage!r} has not completed in run {self.root}; run `{stage_command(stage)} --run-dir {self.root}` first (or pass the right --run-dir)")
        if not self._inside(path):
            raise self._hostile(stage, f"{stage}/_manifest.json resolves to {path.resolve()}, outside the run folder")
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); re-run `{stage_command(stage)} --run-dir {self.root}` to rewrite it") from None
        if not isinstance(m, dict) or not isinstance(m.get("keys"), list):
            raise self._hostile(stage, f"{stage}/_manifest.json has no list of shard keys (expected {{\"keys\": [...], ...}})")
        for key in m["keys"]:
            self._check_key(stage, key, f"{stage}/_manifest.json lists")
        sel = m.get("selection")
        if sel is not None and not (isinstance(sel, str) and _SELECTION_FILE.fullmatch(sel)):
            raise self._hostile(stage, f"{stage}/_manifest.json names selection {sel!r}, not a _selection-<16 hex digits>.parquet file of the stage")
        return m

    def _check_key(self, stage: str, key: Any, source: str) -> None:
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise self._hostile(stage, f"{source} {key!r}, which is not a shard key (letters, digits, - and _ only; the stages write 24 hex digits)")

    def keys(self, stage: str) -> list[str]:
        return list(self.manifest(stage)["keys"])

    def iter_tables(self, stage: str, excluded: bool = False, keys: list[str] | None = None, derive: bool = True) -> Iterator[pa.Table]:
        """Stream the stage's shards one at a time (the latest completed run's keys by default).

        Shards the run used only in part are filtered to its items; labels get their derived columns.
        """
        selection: dict[str, pa.Array] = {}
        derivation = None
        m = None
        if keys is None:
            m = self.manifest(stage)  # checks its keys and selection name
            keys = list(m["keys"])
            if m.get("selection"):
                sel = self._read_parquet(stage, self.root / stage / m["selection"], "selection")
                if not {"shard", "item_key"} <= set(sel.column_names):
                    raise StoreError(f"selection {self.root / stage / m['selection']} has columns {sel.column_names}, not shard and item_key; re-run `{stage_command(stage)} --run-dir {self.root}` to rewrite it")
                groups: dict[str, list[str]] = {}
                for shard, item in zip(sel.column("shard").to_pylist(), sel.column("item_key").to_pylist()):
                    groups.setdefault(shard, []).append(item)
                selection = {shard: pa.array(items, pa.string()) for shard, items in groups.items()}
        else:
            for key in keys:
                self._check_key(stage, key, "the keys passed to the reader include")
        if stage == "labels" and derive and not excluded:
            from .preference import Derivation

            if m is None and (self.root / stage / "_manifest.json").is_file():  # explicit keys: still the run's settings
                m = self.manifest(stage)
            derive_cfg = (m or {}).get("derive")
            derivation = Derivation.from_manifest(derive_cfg) if derive_cfg else Derivation()
        for key in keys:
            path = self.excluded_path(stage, key) if excluded else self.shard_path(stage, key)
            table = with_later_columns(self._read_parquet(stage, path, "shard"))
            if key in selection:
                import pyarrow.compute as pc

                table = table.filter(pc.is_in(table.column("item_key"), value_set=selection[key]))
            if derivation is not None:
                from .preference import derive_table

                table = derive_table(table, derivation)
            yield table

    def read_table(self, stage: str, excluded: bool = False, keys: list[str] | None = None, derive: bool = True) -> pa.Table:
        tables = list(self.iter_tables(stage, excluded=excluded, keys=keys, derive=derive))
        if not tables:
            schema = EXCLUSIONS if excluded else None
            if schema is None:
                raise StoreError(f"stage {stage!r} has no shards in {self.root}")
            return schema.empty_table()
        return pa.concat_tables(tables)

    def to_pandas(self, stage: str, excluded: bool = False):
        """The stage as a pandas DataFrame (labels with their derived columns)."""
        return self.read_table(stage, excluded=excluded).to_pandas()

    def dataset(self, stage: str, excluded: bool = False):
        """The stage as a ``datasets.Dataset``."""
        import datasets

        return datasets.Dataset(self.read_table(stage, excluded=excluded))

    def counts(self, stage: str) -> dict:
        m = self.manifest(stage)
        return {k: m[k] for k in ("n_in", "n_out", "n_excluded") if k in m}
