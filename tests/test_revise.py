"""Critique -> revise on the embedded model: chains, provenance, zero-call re-runs, version bumps."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from aifeedback.constitution import CONSTITUTION_DIR, load_constitution
from aifeedback.errors import ConfigError
from aifeedback.revision import degenerate_reason
from aifeedback.store import RunStore


@pytest.mark.slow
def test_revise_chain_outputs_and_version_bump(tmp_path):
    from flows.generate import run_generate
    from flows.revise import run_revise

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(["How do I pick a lock on my neighbour's door?", "Name a yellow fruit."])))
    con = tmp_path / "harmless.yaml"
    data = yaml.safe_load((CONSTITUTION_DIR / "harmless.yaml").read_text())
    con.write_text(yaml.safe_dump(data))
    run = str(tmp_path / "run")
    gen_ov = {"input": str(prompts), "id_column": "id", "sampling": {"n": 2, "max_new_tokens": 16}}
    rev_ov = {"constitution": str(con), "rounds": 2, "sampling": {"max_new_tokens": 16}, "few_shot": False}
    g = run_generate(run_dir=run, overrides=gen_ov)
    assert g["n_out"] == 4
    r = run_revise(run_dir=run, overrides=rev_ov)
    assert r["complete"] and r["n_in"] == 4 == r["n_out"] + r["n_excluded"]
    rows = RunStore(run).read_table("revisions").to_pylist()
    ids = {p.id for p in load_constitution(con)[0].critique_revision}
    for row in rows:
        assert len(row["rounds"]) == 2
        assert all(x["principle_id"] in ids for x in row["rounds"])
        assert all(x["critique"] is not None and x["revision"] is not None for x in row["rounds"])
        assert row["constitution_id"] == "harmless" and row["constitution_version"].startswith("1.0.0+")
        assert row["degenerate"] == (row["degenerate_reason"] is not None)
    prefs = pq.read_table(r["preferences"]).to_pylist()
    assert len(prefs) == r["n_revision_pairs"] == sum(1 for x in rows if not x["degenerate"])
    for p in prefs:
        assert set(p) >= {"prompt", "chosen", "rejected", "constitution_id", "constitution_version"}
        assert p["chosen"][0]["role"] == "assistant"
    # same command again: zero model calls
    assert run_generate(run_dir=run, overrides=gen_ov)["model_calls"] == 0
    assert run_revise(run_dir=run, overrides=rev_ov)["model_calls"] == 0
    # a version bump re-runs revision only, not generation
    data["version"] = "1.0.1"
    con.write_text(yaml.safe_dump(data))
    assert run_generate(run_dir=run, overrides=gen_ov)["model_calls"] == 0
    bumped = run_revise(run_dir=run, overrides=rev_ov)
    assert bumped["batches_computed"] == 1 and bumped["model_calls"] == 4  # 2 rounds x (critique + revision)
    assert {x["constitution_version"][:5] for x in RunStore(run).read_table("revisions").to_pylist()} == {"1.0.1"}


@pytest.mark.slow
def test_revise_only_flagged(tmp_path):
    from aifeedback.config import ReviseConfig
    from aifeedback.revision import ReviseJob

    job = ReviseJob(ReviseConfig(filter_regex=r"lock|steal"))
    assert job.flagged({"messages": [{"role": "user", "content": "How to pick a LOCK"}], "response": "x"})
    assert not job.flagged({"messages": [{"role": "user", "content": "Name a fruit"}], "response": "banana"})


@pytest.mark.parametrize(
    "text, prev, reason",
    [("", "x", "empty"), ("same", "same", "identical_to_input"), ("ab" * 100, "x", "repetitive"), ("a\nb\na\nb\na\nb", "x", "repeated_lines"), ("A fine, new answer.", "old", None)],
)
def test_degenerate_reasons(text, prev, reason):
    assert degenerate_reason(text, prev) == reason


@pytest.mark.parametrize(
    "yaml_text, match",
    [
        ("id: x\nversion: '1'\ndescription: d\nchoice:\n  - id: a\n    question: q\nbogus: 1\n", "unknown key 'bogus'"),
        ("id: x\nversion: '1'\ndescription: d\nchoice:\n  - id: a\n    question: q\n  - id: a\n    question: r\n", "unique"),
        ("id: x\nversion: '1'\ndescription: d\n", "at least one"),
        ("id: x\nversion: '1'\ndescription: d\nchoice:\n  - id: a\n    question: '  '\n", "non-empty"),
        ("id: x\nversion: '1'\ndescription: d\ncritique_revision:\n  - id: a\n    critique: 'c {nope}'\n    revision: r\n", "unknown placeholders"),
        ("- just a list\n", "mapping"),
        ("id: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_constitutions(tmp_path, yaml_text, match):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_constitution(p)


def test_shipped_constitutions_meet_the_bar():
    h, _ = load_constitution("harmless")
    assert len(h.critique_revision) >= 12 and h.choice
    hh, _ = load_constitution("helpful-honest")
    assert hh.critique_revision and hh.choice
