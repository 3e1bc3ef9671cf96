"""A hostile run folder: manifests that name files outside the run, and files that are not Parquet.

A run folder may come from someone else. Every test puts a real Parquet file with a
marker row outside the run, points the run's labels manifest at it (``../`` in a key,
an absolute key, a symlinked shard, a symlinked stage folder, a selection outside the
stage) and checks that reading the run, ``aifeedback view`` and ``aifeedback export``
stop with a StoreError that names the run folder and the entry, that the marker never
shows up, and that no Parquet file outside the run was opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifeedback.errors import StoreError
from aifeedback.records import LABEL_OUTPUTS, exclusion
from aifeedback.store import RunStore, batch_key

MARKER = "MARKER-outside-the-run-7f3a"
DERIVE = {"tie_margin": 0.05, "temperature": 1.0, "cot": False, "cot_clamp": None}


def label_row(pair_id: str, response_a: str, item_key: str) -> dict:
    return {
        "pair_id": pair_id, "prompt_id": f"p-{pair_id}", "messages": [{"role": "user", "content": "Capital of France?"}],
        "response_a": response_a, "response_b": "Lyon.", "mode": "pairwise-both",
        "option_probs": [{"order": "AB", "principle_id": None, "probs": [0.8, 0.2]}, {"order": "BA", "principle_id": None, "probs": [0.3, 0.7]}],
        "candidates": ["1", "2"], "orders": ["AB", "BA"], "principle_ids": [], "prob_source": "logprobs", "retries": 0, "injection_flags": [],
        "truncated": False, "labeler_model": "hand-written", "backend": "none", "template": "pairwise", "template_version": "pairwise@test",
        "seed": 0, "config_hash": "test", "item_key": item_key,
    }


@pytest.fixture
def world(tmp_path):
    """``tmp/run``: a labels stage of two real pairs in one shard; ``tmp/secret/abc.parquet``: a shard-shaped file whose
    row holds MARKER, and ``tmp/secret/sel.parquet``, a selection-shaped one; ``tmp/secret/labels``: a whole stage folder of it."""
    run, secret = tmp_path / "run", tmp_path / "secret"
    store = RunStore(run)
    key = batch_key("labels", ["a" * 24, "b" * 24], "", "", "")
    store.write_batch("labels", key, [label_row("p1", "Paris.", "a" * 24), label_row("p2", "Paris, France.", "b" * 24)], LABEL_OUTPUTS, [exclusion("bad", "labels", "empty_response", "response_b is empty")])
    store.write_manifest("labels", [key], {"n_in": 3, "n_out": 2, "n_excluded": 1, "derive": DERIVE})
    outside = RunStore(secret / "store")  # the marker, written by the store itself so that it is a perfectly good shard
    outside.write_batch("labels", "abc", [label_row("stolen", MARKER, "c" * 24)], LABEL_OUTPUTS, [exclusion(MARKER, "labels", "empty_response", MARKER)])
    (secret / "abc.parquet").write_bytes(outside.shard_path("labels", "abc").read_bytes())
    (secret / "abc.excluded.parquet").write_bytes(outside.excluded_path("labels", "abc").read_bytes())
    pq.write_table(pa.table({"shard": [key], "item_key": [MARKER]}), secret / "sel.parquet")
    return {"run": run, "secret": secret, "key": key, "outside_store": secret / "store"}


@pytest.fixture
def opened(monkeypatch):
    """Every path pyarrow is asked to read as Parquet in this test, resolved (a spy around the real readers)."""
    seen: list[Path] = []
    real_read, real_file = pq.read_table, pq.ParquetFile

    def read_table(source, *a, **kw):
        seen.append(Path(source).resolve())
        return real_read(source, *a, **kw)

    def parquet_file(source, *a, **kw):
        seen.append(Path(source).resolve())
        return real_file(source, *a, **kw)

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq, "ParquetFile", parquet_file)
    return seen


def edit_manifest(run: Path, **changes) -> None:
    path = run / "labels" / "_manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def assert_refused(run: Path, opened: list[Path], entry: str, problem: str) -> str:
    """Reading the run's labels (rows and exclusions) raises a StoreError naming the run folder, ``entry`` and ``problem``,
    without the marker and without opening any Parquet file outside the run. Returns the message."""
    for excluded in (False, True):
        with pytest.raises(StoreError) as exc:
            RunStore(run, probe=False).read_table("labels", excluded=excluded)
        msg = str(exc.value)
        assert f"run folder {run.resolve()}" in msg and entry in msg and problem in msg, msg
        assert "nothing outside the run was read" in msg and "--run-dir" in msg, msg
        assert MARKER not in msg
    outside = [p for p in opened if not p.is_relative_to(run.resolve())]
    assert outside == [], outside
    return msg


def test_the_untouched_run_reads_back_its_own_rows(world, opened):
    """Known answer, so the refusals below are not refusals of everything."""
    store = RunStore(world["run"], probe=False)
    assert [r["response_a"] for r in store.read_table("labels").to_pylist()] == ["Paris.", "Paris, France."]
    assert store.read_table("labels", excluded=True).column("item_id").to_pylist() == ["bad"]
    assert opened and all(p.is_relative_to(world["run"].resolve()) for p in opened)


def test_a_dotdot_key_in_the_manifest_is_refused(world, opened):
    edit_manifest(world["run"], keys=[world["key"], "../../secret/abc"])
    assert (world["run"] / "labels" / "../../secret/abc.parquet").resolve() == (world["secret"] / "abc.parquet").resolve()  # it would reach the marker
    assert_refused(world["run"], opened, "'../../secret/abc'", "which is not a shard key")


def test_an_absolute_key_in_the_manifest_is_refused(world, opened):
    absolute = str(world["secret"] / "abc")  # Path / "/abs" drops the run folder: the old reader opened this file
    edit_manifest(world["run"], keys=[absolute])
    assert_refused(world["run"], opened, repr(absolute), "which is not a shard key")


@pytest.mark.parametrize("key", [None, 7, "", ".", "..", "a/b", "a\\b", "abc.excluded", "x" * 65, "café"])
def test_keys_that_are_not_plain_names_are_refused(world, opened, key):
    edit_manifest(world["run"], keys=[key])
    assert_refused(world["run"], opened, repr(key), "which is not a shard key")


def test_a_symlinked_shard_pointing_out_of_the_run_is_refused(world, opened):
    key = "f" * 24
    os.symlink(world["secret"] / "abc.parquet", world["run"] / "labels" / f"{key}.parquet")
    os.symlink(world["secret"] / "abc.excluded.parquet", world["run"] / "labels" / f"{key}.excluded.parquet")
    edit_manifest(world["run"], keys=[world["key"], key])
    assert_refused(world["run"], opened, f"labels/{key}", "outside the run folder")
    # and the stage's reuse index neither reads it nor counts it as a finished batch
    store = RunStore(world["run"], probe=False)
    assert set(store.item_index("labels")[1]) == {world["key"]} and not store.has("labels", key)
    assert [p for p in opened if not p.is_relative_to(world["run"].resolve())] == []


def test_a_symlinked_stage_folder_is_refused(world, opened, tmp_path):
    run = tmp_path / "run2"
    run.mkdir()
    os.symlink(world["outside_store"] / "labels", run / "labels")  # a complete, valid stage folder, outside run2
    RunStore(world["outside_store"]).write_manifest("labels", ["abc"], {"n_in": 2, "n_out": 1, "n_excluded": 1, "derive": DERIVE})
    opened.clear()
    assert_refused(run, opened, "labels/_manifest.json", "outside the run folder")


@pytest.mark.parametrize("where", ["../../secret/sel.parquet", "ABSOLUTE", "/etc/hostname", "_selection.parquet", "_selection-0123456789abcdef.parquet/../x.parquet"])
def test_a_selection_that_is_not_the_stages_own_file_is_refused(world, opened, where):
    sel = str(world["secret"] / "sel.parquet") if where == "ABSOLUTE" else where
    edit_manifest(world["run"], selection=sel)
    assert_refused(world["run"], opened, f"selection {sel!r}", "not a _selection-<16 hex digits>.parquet file")


def test_a_selection_symlinked_out_of_the_run_is_refused(world, opened):
    name = "_selection-0123456789abcdef.parquet"
    os.symlink(world["secret"] / "sel.parquet", world["run"] / "labels" / name)
    edit_manifest(world["run"], selection=name)
    with pytest.raises(StoreError, match=f"selection labels/{name} resolves to .*sel.parquet, outside the run folder; nothing outside the run was read"):
        RunStore(world["run"], probe=False).read_table("labels")
    assert [p for p in opened if not p.is_relative_to(world["run"].resolve())] == []


def test_a_selection_or_shard_that_is_not_parquet_is_a_store_error(world):
    """Not a raw ArrowInvalid: the error names the file and the fix."""
    run = world["run"]
    name = "_selection-0123456789abcdef.parquet"
    (run / "labels" / name).write_text("this is not a Parquet file\n")
    edit_manifest(run, selection=name)
    with pytest.raises(StoreError, match=re.escape(f"selection {run.resolve() / 'labels' / name} is unreadable (") + r".*\); delete it and re-run `aifeedback label --run-dir"):
        RunStore(run, probe=False).read_table("labels")
    pq.write_table(pa.table({"x": [1]}), run / "labels" / name)  # Parquet, but not a selection
    with pytest.raises(StoreError, match=r"has columns \['x'\], not shard and item_key"):
        RunStore(run, probe=False).read_table("labels")
    edit_manifest(run, selection=None)
    RunStore(run, probe=False).shard_path("labels", world["key"]).write_text("not parquet")
    with pytest.raises(StoreError, match=rf"shard .*{world['key']}.parquet is unreadable"):
        RunStore(run, probe=False).read_table("labels")


def test_a_manifest_that_is_not_a_manifest_is_a_store_error(world):
    path = world["run"] / "labels" / "_manifest.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="_manifest.json is unreadable"):
        RunStore(world["run"], probe=False).manifest("labels")
    path.write_text(json.dumps({"keys": "../../secret/abc"}))
    with pytest.raises(StoreError, match="has no list of shard keys"):
        RunStore(world["run"], probe=False).keys("labels")


def test_a_real_partial_selection_and_a_loop_style_key_still_read(world):
    """What aifeedback itself writes passes the checks: a selection file from write_manifest, and the training
    loop's shard key ("iter1-2", trainers/loop/stages.py)."""
    store = RunStore(world["run"])
    store.write_manifest("labels", [world["key"]], {"derive": DERIVE}, selection={world["key"]: ["b" * 24]})
    assert [r["pair_id"] for r in store.read_table("labels").to_pylist()] == ["p2"]
    store.write_batch("labels", "iter1-2", [label_row("p3", "Paris!", "d" * 24)], LABEL_OUTPUTS)
    store.write_manifest("labels", ["iter1-2"], {"derive": DERIVE})
    assert [r["pair_id"] for r in store.read_table("labels").to_pylist()] == ["p3"]


@pytest.mark.timeout(120)
def test_view_and_export_of_a_hostile_run_exit_2_and_show_no_marker(world, opened, tmp_path):
    """`aifeedback view` and `aifeedback export` read through the store: the same refusal, exit code 2, and neither
    the page nor the export is written."""
    from typer.testing import CliRunner

    import flows.label  # noqa: F401  Prefect sets up its log handlers at import: here, not on a CliRunner stream
    from flows.cli import app

    edit_manifest(world["run"], keys=["../../secret/abc"])
    page, export = tmp_path / "page.html", tmp_path / "export"
    for args in (["view", str(world["run"]), "--out", str(page)], ["export", "--run-dir", str(world["run"]), "--to-dir", str(export)]):
        res = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
        assert res.exit_code == 2, res.output
        assert "which is not a shard key" in res.output and "'../../secret/abc'" in res.output and MARKER not in res.output, res.output
    assert not page.exists() and not export.exists()
    assert [p for p in opened if not p.is_relative_to(world["run"].resolve())] == []
