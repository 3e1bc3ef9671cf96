"""The whole pipeline flow on the embedded model, with three responses per prompt, so labels_rankings.parquet is written."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from aifeedback.store import RunStore

PROMPTS = [
    {"id": "story", "prompt": "Tell me a very short story about a dragon."},
    {"id": "food", "prompt": "Describe your favourite food in one sentence."},
    {"id": "empty", "prompt": ""},  # excluded by generation, with a reason
]
N = 3  # responses per prompt: three pairs per prompt, so a Bradley-Terry ranking


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from flows.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("pipeline")
    src = base / "prompts.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    summary = run_pipeline(
        run_dir=str(base / "run"),
        generate={"input": str(src), "id_column": "id", "sampling": {"n": N, "max_new_tokens": 8, "temperature": 1.0}},
        revise={"constitution": "harmless", "rounds": 1, "few_shot": False, "sampling": {"max_new_tokens": 8}},
        label={"tie_margin": 0.01},
    )
    return summary, base / "run"


def test_pipeline_flow_runs_every_stage_and_accounts_for_every_item(pipeline_run):
    summary, run = pipeline_run
    assert set(summary) == {"run_dir", "generate", "revise", "label"} and summary["run_dir"] == str(run.resolve())
    store = RunStore(run)
    gen, rev, lab = summary["generate"], summary["revise"], summary["label"]
    # generation: every prompt is excluded or gives N responses
    assert gen["n_in"] == len(PROMPTS) and gen["n_excluded"] == 1
    assert gen["n_out"] == N * (gen["n_in"] - gen["n_excluded"]) == store.read_table("responses").num_rows
    assert store.read_table("responses", excluded=True).column("item_id").to_pylist() == ["empty"]
    # revision and labels: n_in = n_out + n_excluded, and the stores hold exactly those rows
    assert rev["n_in"] == gen["n_out"] == rev["n_out"] + rev["n_excluded"]
    n_pairs = (gen["n_in"] - gen["n_excluded"]) * N * (N - 1) // 2  # every pair of a prompt's responses
    assert lab["n_in"] == n_pairs == lab["n_out"] + lab["n_excluded"]
    for stage, s in (("revisions", rev), ("labels", lab)):
        assert store.read_table(stage).num_rows == s["n_out"] and store.read_table(stage, excluded=True).num_rows == s["n_excluded"]
        assert all(s["model_calls"] >= 1 for s in (gen, rev, lab))
    assert len(store.read_table("revisions").to_pylist()[0]["rounds"]) == 1
    assert all(0 <= r["p_a"] <= 1 and r["orders"] == ["AB", "BA"] for r in store.read_table("labels").to_pylist())


def test_labels_rankings_parquet_ranks_each_prompts_responses(pipeline_run):
    """With more than two responses per prompt, every pair is labelled and a Bradley-Terry ranking is written."""
    _, run = pipeline_run
    labels = RunStore(run).read_table("labels").to_pylist()
    path = run / "labels_rankings.parquet"
    assert path.is_file()
    ranks = pq.read_table(path).to_pylist()
    by_prompt: dict[str, list[dict]] = {}
    for r in ranks:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    ranked = {pid for pid, rows in by_prompt.items() if len(rows) >= 3}
    assert ranked, "no prompt got a ranking"
    complete = 0
    for pid, rows in by_prompt.items():
        pairs = [r for r in labels if r["prompt_id"] == pid]
        texts = {t for r in pairs for t in (r["response_a"], r["response_b"])}
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(texts) + 1)) and {r["response"] for r in rows} == texts
        assert all(r["n_responses"] == len(texts) and r["n_pairs"] == len(pairs) for r in rows)
        assert all(a["bt_strength"] >= b["bt_strength"] for a, b in zip(rows, rows[1:]))
        # a complete round robin: the Bradley-Terry order follows each response's total soft wins
        wins = {t: 0.0 for t in texts}
        for r in pairs:
            wins[r["response_a"]] += r["p_a"]
            wins[r["response_b"]] += 1 - r["p_a"]
        if len(pairs) == len(texts) * (len(texts) - 1) // 2:
            complete += 1
            assert all(wins[a["response"]] >= wins[b["response"]] - 1e-9 for a, b in zip(rows, rows[1:]))
    assert complete >= 1, "no prompt had every pair of its responses labelled"
    # responses of one prompt, not just label rows: the ranked texts are this run's generations
    responses = {r["response"] for r in RunStore(run).read_table("responses").to_pylist()}
    assert {r["response"] for r in ranks} <= responses
