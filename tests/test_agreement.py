"""Agreement reports: importers, joins, metrics end to end, and the HTML in a real headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest

from aifeedback.errors import InputError
from labelers.agreement import Judge, evaluate, judge_from_file
from labelers.human_data import generic_items, parse_transcript, split_hh


def test_hh_transcript_split():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I X?\n\nAssistant: Safely, like this."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I X?\n\nAssistant: Dangerously."
    ctx, c, r = split_hh(chosen, rejected)
    assert [m["role"] for m in ctx] == ["user", "assistant", "user"] and c == "Safely, like this." and r == "Dangerously."
    assert parse_transcript("\n\nHuman: a\n\nAssistant: b") == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert split_hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: other\n\nAssistant: c") is None


def test_mismatched_ids_are_an_error_with_counts():
    humans = {"p1": {"human": "A"}, "p2": {"human": "B"}}
    with pytest.raises(InputError, match="shares no pair ids.*2 judge ids.*2 human ids"):
        evaluate(Judge("j", {"x1": "A", "x2": "B"}), humans)


def test_generic_and_malformed_human_files(tmp_path):
    good = tmp_path / "h.jsonl"
    good.write_text(json.dumps({"pair_id": "a", "label": "B"}) + "\n" + json.dumps({"pair_id": "b", "label": "weird"}) + "\n")
    items = generic_items(good, "pair_id", "label")
    assert [i["human"] for i in items] == ["B", None]
    with pytest.raises(InputError, match="Available columns.*--human-label-column"):
        generic_items(good, "pair_id", "winner")
    bad = tmp_path / "j.json"
    bad.write_text(json.dumps([{"idx": "0", "verdict": "1"}]))
    with pytest.raises(InputError, match="Available columns.*Name the id column pair_id .or idx. and the verdict column label"):
        judge_from_file("j", str(bad), label_column="missing")


def _report(tmp_path, shared_data=None):
    from labelers.report import write_report

    humans = {f"p{i}": {"human": "A" if i % 3 else "B", "response_a": "x" * (i + 1), "response_b": "y" * 5, "category": "c1" if i < 20 else "c2", "annotators": ["A", "A", "B"]} for i in range(40)}
    probs = {f"p{i}": (0.8 if i % 4 else 0.3) for i in range(40)}
    rows = {f"p{i}": {"p_ab": 0.9 if i % 2 else 0.7, "p_ba": 0.3 if i % 2 else 0.6} for i in range(40)}
    j = Judge("tiny-labeler", {k: "A" if p > 0.5 else "B" for k, p in probs.items()}, probs, rows, "test judge")
    r = evaluate(j, humans)
    from labelers.agreement import human_ceiling

    return r, write_report(tmp_path / "rep", "Test report", [r], human_ceiling(humans), {"human": "synthetic"})


def test_report_files_and_metrics(tmp_path):
    r, paths = _report(tmp_path)
    # 40 items; judge says A unless i%4==0; human says A unless i%3==0
    gold = ["A" if i % 3 else "B" for i in range(40)]
    pred = ["A" if i % 4 else "B" for i in range(40)]
    assert r["agreement"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / 40)
    assert r["position"]["consistency"] == pytest.approx(0.5)
    assert set(r["by_category"]) == {"c1", "c2"}
    from test_known_answers import temperature_by_grid  # the maximum-likelihood T by a numpy grid search

    assert 0 <= r["ece"] <= 1 and r["temperature_scaling"]["temperature"] == pytest.approx(temperature_by_grid([0.8 if i % 4 else 0.3 for i in range(40)], [1 if g == "A" else 0 for g in gold]), rel=1e-3)
    m = json.loads(paths["json"].read_text())
    assert m["human_ceiling"]["pairwise_agreement"] == pytest.approx(1 / 3)
    assert "tiny-labeler" in paths["md"].read_text()
    assert (paths["html"].parent / "temperature-tiny-labeler.json").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by scripts/system-deps.sh (make test)")
def test_report_renders_in_headless_chromium(tmp_path):
    r, paths = _report(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}"]
    url = paths["html"].as_uri()
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-loaded="true"' in dom, "every embedded plot must load"
    assert f"{r['agreement']:.1%}" in dom and "tiny-labeler" in dom
    assert len(re.findall(r"<img ", dom)) >= 3
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    out = paths["html"].parent / "report-screenshot.png"
    shutil.copy(shot, out)


def test_pandalm_gpt35_judge_against_humans(shared_data):
    from labelers.human_data import pandalm_items

    humans = {h["pair_id"]: h for h in pandalm_items(shared_data / "pandalm" / "testset-v1.json")}
    j = judge_from_file("gpt35", str(shared_data / "pandalm" / "gpt-3.5-turbo-testset-v1.json"))
    r = evaluate(j, humans)
    assert r["join"]["joined"] + r["join"]["human_only"] == 999
    assert 0.7 < r["agreement"] < 0.85  # GPT-3.5 agrees with the human majority about 78% of the time


def test_join_counts_and_categories_by_hand():
    from labelers.agreement import join_humans

    humans = {
        "a": {"pair_id": "a", "human": "A", "category": "math"},
        "b": {"pair_id": "b", "human": "B", "category": "math"},
        "c": {"pair_id": "c", "human": "tie", "category": "code"},
        "d": {"pair_id": "d", "human": "A", "category": "", "source": "file.jsonl"},
        "e": {"pair_id": "e", "human": "B", "category": None},
    }
    judge = Judge("j", {"a": "A", "b": "A", "c": "B", "d": "A", "z": "B"})
    joined, join = join_humans(judge, humans)
    assert join == {"judge_items": 5, "human_items": 5, "joined": 4, "judge_only": 1, "human_only": 1}
    assert joined["pair_id"].tolist() == ["a", "b", "c", "d"]
    r = evaluate(judge, humans, n_boot=50)
    assert (r["n_decided"], r["n_human_ties_excluded"]) == (3, 1)
    assert r["agreement"] == pytest.approx(2 / 3)
    # an empty category falls back to the source; math: a right, b wrong
    assert r["by_category"] == {"math": {"n": 2, "agreement": 0.5}, "file.jsonl": {"n": 1, "agreement": 1.0}}
