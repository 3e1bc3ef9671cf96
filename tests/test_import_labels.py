"""`aifeedback import-labels`: a judge's verdict file becomes label rows, with the judge as provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PANDALM = (REPO.parent / "shared" / "data" / "pandalm").resolve()


def _cli(args):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def _pairs_file(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({"pair_id": f"x{i}", "prompt": f"question {i}", "response_a": f"answer a {i}", "response_b": f"answer b {i}"}) + "\n" for i in range(n)))
    return path


def test_read_verdicts_hard_soft_and_pandalm_style(tmp_path):
    from labelers.import_labels import read_verdicts

    f = tmp_path / "v.jsonl"
    f.write_text('{"pair_id": "x0", "label": "A"}\n{"pair_id": "x1", "label": "2"}\n{"pair_id": "x2", "label": "tie"}\n{"pair_id": "x3", "label": "maybe"}\nnot json\n')
    v, counts = read_verdicts(str(f))
    assert {k: x["p_a"] for k, x in v.items()} == {"x0": 1.0, "x1": 0.0, "x2": 0.5}
    assert counts["unreadable"] == 2 and counts["rows"] == 5
    p = tmp_path / "p.csv"
    p.write_text("id,prob\nx0,0.8\nx1,1.7\nx2,0.25\n")
    v, counts = read_verdicts(str(p), id_column="id", prob_column="prob")
    assert {k: x["p_a"] for k, x in v.items()} == {"x0": 0.8, "x2": 0.25} and counts["unreadable"] == 1
    assert all(x["source"] == "imported:probability" for x in v.values())
    pl = tmp_path / "pandalm.json"
    pl.write_text(json.dumps([{"idx": "0", "gpt_result": "1"}, {"idx": "1", "gpt_result": "2"}, {"idx": "2", "gpt_result": "0"}]))
    v, _ = read_verdicts(str(pl))
    assert {k: x["p_a"] for k, x in v.items()} == {"pandalm-0": 1.0, "pandalm-1": 0.0, "pandalm-2": 0.5}


def test_verdicts_matching_no_pair_is_a_clear_message(tmp_path):
    from aifeedback.errors import InputError
    from labelers.import_labels import check_overlap, read_verdicts

    f = tmp_path / "v.jsonl"
    f.write_text('{"pair_id": "other-0", "label": "A"}\n')
    v, _ = read_verdicts(str(f))
    with pytest.raises(InputError, match="none of the 1 verdict ids.*other-0.*x0.*--id-prefix"):
        check_overlap(["x0", "x1"], v, str(f))
    out = _cli(["import-labels", str(f), "--judge", "j", "--run-dir", str(tmp_path / "run"), "--input", str(_pairs_file(tmp_path / "pairs.jsonl"))])
    assert out.returncode == 2 and "matches a pair of the run" in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]


def test_import_then_train_agreement_and_export_read_them_like_any_labels(tmp_path):
    from aifeedback.preference import trl_pair
    from aifeedback.store import RunStore
    from labelers.agreement import judge_from_run

    pairs = _pairs_file(tmp_path / "pairs.jsonl", 6)
    f = tmp_path / "v.jsonl"
    f.write_text('{"pair_id": "x0", "p": 0.9}\n{"pair_id": "x1", "p": 0.1}\n{"pair_id": "x2", "p": 0.5}\n{"pair_id": "x3", "p": 0.7}\n{"pair_id": "zz", "p": 0.7}\n')
    run = tmp_path / "run"
    out = _cli(["import-labels", str(f), "--judge", "hosted-judge-v1", "--run-dir", str(run), "--input", str(pairs), "--prob-column", "p"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RunStore(run)
    rows = {r["pair_id"]: r for r in store.read_table("labels").to_pylist()}
    excl = store.read_table("labels", excluded=True).to_pylist()
    assert sorted(rows) == ["x0", "x1", "x2", "x3"] and sorted(e["item_id"] for e in excl) == ["x4", "x5"]  # 6 in = 4 labelled + 2 without a verdict
    assert {e["reason"] for e in excl} == {"no_verdict"}
    assert all(r["labeler_model"] == "hosted-judge-v1" and r["backend"] == "imported" and r["prob_source"] == "imported:probability" for r in rows.values())
    assert rows["x0"]["p_a"] == pytest.approx(0.9) and rows["x0"]["hard_label"] == "A" and rows["x2"]["hard_label"] == "tie" and rows["x1"]["hard_label"] == "B"
    assert trl_pair(rows["x1"])["chosen"][0]["content"] == "answer b 1"
    m = store.manifest("labels")
    assert m["verdicts_matching_no_pair"] == 1 and m["verdicts_matched"] == 4 and m["judge"] == "hosted-judge-v1"
    j = judge_from_run("hosted", str(run))
    assert j.verdicts == {"x0": "A", "x1": "B", "x2": "tie", "x3": "A"}
    exp = _cli(["export", "--run-dir", str(run), "--to-dir", str(tmp_path / "hub")])
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]


@pytest.mark.skipif(not (PANDALM / "testset-v1.json").is_file(), reason="PandaLM data not in ../shared/data/pandalm")
def test_pandalm_gpt35_verdicts_import_with_their_agreement_unchanged(tmp_path):
    from aifeedback.store import RunStore
    from labelers.agreement import evaluate, judge_from_file, judge_from_run
    from labelers.human_data import pandalm_items

    pairs = tmp_path / "pandalm_pairs.jsonl"
    imp = _cli(["import-pairs", "pandalm", str(PANDALM / "testset-v1.json"), str(pairs)])
    assert imp.returncode == 0, imp.stderr[-2000:]
    run = tmp_path / "run"
    out = _cli(["import-labels", str(PANDALM / "gpt-3.5-turbo-testset-v1.json"), "--judge", "gpt-3.5-turbo", "--run-dir", str(run), "--input", str(pairs), "--set", "tie_margin=0.0"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    humans = {h["pair_id"]: h for h in pandalm_items(PANDALM / "testset-v1.json")}
    run_judge = judge_from_run("gpt35-run", str(run))
    file_judge = judge_from_file("gpt35-file", str(PANDALM / "gpt-3.5-turbo-testset-v1.json"))
    excluded = {e["item_id"]: e["reason"] for e in RunStore(run).read_table("labels", excluded=True).to_pylist()}
    assert len(run_judge.verdicts) + len(excluded) == len(pandalm_items(PANDALM / "testset-v1.json"))  # count in = out + excluded
    assert set(excluded.values()) <= {"missing_response", "wrong_type", "empty_response", "identical_responses", "no_verdict"}
    file_judge.verdicts = {k: v for k, v in file_judge.verdicts.items() if k in run_judge.verdicts}  # the same pairs
    from_run = evaluate(run_judge, humans, n_boot=200)
    from_file = evaluate(file_judge, humans, n_boot=200)
    assert from_run["agreement"] == pytest.approx(from_file["agreement"]) and from_run["join"]["joined"] == from_file["join"]["joined"]
