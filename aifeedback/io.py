"""Read prompt and pair files (datasets folder, Parquet, JSONL, CSV) in chunks, turning bad rows into exclusions."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

SUPPORTED = ".parquet, .jsonl/.json, .csv, .jsonl.gz, or a folder saved by datasets (save_to_disk) or holding Parquet files"


def iter_rows(path: str | Path, chunk_rows: int = 4096) -> Iterator[dict | tuple[str, str]]:
    """Yield row dicts; a row that cannot be decoded is yielded as ``("__bad__", reason)``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"input {p} does not exist; pass a file or folder ({SUPPORTED})")
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[next(iter(ds))]
            for batch in ds.iter(batch_size=chunk_rows):
                keys = list(batch)
                for i in range(len(batch[keys[0]]) if keys else 0):
                    yield {k: batch[k][i] for k in keys}
            return
        files = sorted(p.rglob("*.parquet"))
        if not files:
            raise InputError(f"folder {p} holds neither a saved dataset nor Parquet files ({SUPPORTED})")
        for f in files:
            yield from iter_rows(f, chunk_rows)
        return
    if p.stat().st_size == 0:
        raise InputError(f"input {p} is an empty file; check the path, or write the rows first ({SUPPORTED})")
    name = p.name.lower()
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(p)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{p} is not a readable Parquet file ({exc}); re-export it, or use JSONL or CSV") from None
        for batch in pf.iter_batches(batch_size=chunk_rows):
            yield from batch.to_pylist()
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        opener = _open_gz if name.endswith(".gz") else open
        with opener(p, "rb") as fh:
            for lineno, line in _lines(fh, p):
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield ("__bad__", f"line {lineno}: invalid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8")
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield ("__bad__", f"line {lineno}: not valid JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict):
                    yield ("__bad__", f"line {lineno}: expected a JSON object, got {type(row).__name__}")
                    continue
                yield row
    elif name.endswith(".json"):
        try:
            text = p.read_text(encoding="utf-8")
            if not text.strip():
                raise InputError(f"{p} is empty; pass a file that holds a JSON list of objects")
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            raise InputError(f"{p} is not valid UTF-8 ({exc.reason}); re-encode it as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); use JSONL for one record a line") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise InputError(f"{p} must hold a JSON list of objects")
        for i, row in enumerate(data):
            yield row if isinstance(row, dict) else ("__bad__", f"item {i}: expected an object, got {type(row).__name__}")
    elif name.endswith(".csv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        bad: list = []  # rows with the wrong number of fields: exclusions, not a failed file

        def on_bad(row) -> str:
            bad.append(row)
            return "skip"

        opts = {"read_options": pacsv.ReadOptions(block_size=1 << 22), "parse_options": pacsv.ParseOptions(invalid_row_handler=on_bad)}
        try:
            names = pacsv.open_csv(p, **opts).schema.names
            bad.clear()
            # every column as text: a response "4" or a prompt "true" must not become a number or a bool
            reader = pacsv.open_csv(p, **opts, convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
            for batch in itertools.chain(reader, [None]):
                yield from batch.to_pylist() if batch is not None else ()
                while bad:
                    r = bad.pop(0)
                    yield ("__bad__", f"CSV row with {r.actual_columns} fields, expected {r.expected_columns}: {r.text[:200]!r}; quote fields that hold commas")
        except Exception as exc:  # pyarrow raises ArrowInvalid for undecodable text
            hint = "; re-encode it as UTF-8" if "UTF8" in str(exc) else ""
            raise InputError(f"{p} could not be read as CSV: {exc}{hint}") from None
    else:
        raise InputError(f"unsupported input {p.name}; use {SUPPORTED}")


def _open_gz(path, mode):
    import gzip

    return gzip.open(path, mode)


def _lines(fh, p: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines; a corrupt or truncated gzip stream is an error that names the file."""
    try:
        yield from enumerate(fh, 1)
    except (OSError, EOFError) as exc:
        raise InputError(f"{p} could not be read ({exc}); if it is not gzip-compressed, drop the .gz from its name, else re-compress it") from None


def to_messages(value) -> tuple[list[dict] | None, str | None]:
    """Plain text or a list of chat messages -> (messages, None) or (None, reason)."""
    if value is None:
        return None, "missing_prompt: the prompt is null"
    if isinstance(value, str):
        if not value.strip():
            return None, "empty_prompt: the prompt is an empty string"
        return [{"role": "user", "content": value}], None
    if isinstance(value, list):
        msgs = []
        for m in value:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                return None, f"bad_messages: each message needs role and content, got {str(m)[:80]!r}"
            if m["role"] not in ("system", "user", "assistant"):
                return None, f"bad_messages: unknown role {m['role']!r} (use system, user or assistant)"
            if not isinstance(m["content"], str):
                return None, f"bad_messages: content must be text, got {type(m['content']).__name__}"
            msgs.append({"role": m["role"], "content": m["content"]})
        if not msgs or not any(m["content"].strip() for m in msgs if m["role"] == "user"):
            return None, "empty_prompt: no user message with text"
        if msgs[-1]["role"] != "user":
            return None, "bad_messages: the last message must come from the user"
        return msgs, None
    return None, f"wrong_type: prompt must be text or a list of messages, got {type(value).__name__}"
