"""`aifeedback import-labels --format alpaca-eval`: AlpacaEval's GPT-4-turbo annotations become a labelled run.

A small folder in AlpacaEval's format, written here with known numbers, checks the counts
(in = labelled + excluded, each bad row with its reason), the label of every pair, and the
Bradley–Terry arithmetic of derived pairs against odds computed by hand. The real files in
../shared/data/alpaca-eval are imported when present; train-rm accepts an imported run.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.app import app

REFS = [
    {"instruction_id": 0, "instruction": "Name a colour.", "dataset": "toy", "reference_generator": "gpt4_1106_preview", "reference_output": "Blue is a colour."},
    {"instruction_id": 1, "instruction": "Say hi.", "dataset": "toy", "reference_generator": "gpt4_1106_preview", "reference_output": "Hello there!"},
    {"instruction_id": 2, "instruction": "Count to two.", "dataset": "toy", "reference_generator": "gpt4_1106_preview", "reference_output": "One, two."},
]
# (instruction_id, generator, output, preference); preference = 1 + P(output beats the reference)
ANNOTATIONS = [
    (0, "m", "Red.", 1.8),
    (0, "m_verbose", "Red, the colour of ripe tomatoes and of fire engines.", 1.5),
    (0, "m_concise", "Red", 1.9),
    (0, "other", "Green.", 1.6),
    (1, "m", "Hi.", 1.0),
    (1, "m_concise", "", 1.3),  # empty output: excluded by the label job, no derived pair from it
    (1, "m_verbose", "Hello hello, and a good day to you!", 2.5),  # out of [1, 2]
    (7, "m", "An answer to nothing.", 1.5),  # no such instruction
    (0, "m", "Crimson.", 1.2),  # a second m for instruction 0
    "not json at all",
    (1, "other", "Hey!", "high"),  # not a number
    (1, "other2", "Hello there!", 1.5),  # the reference's own text
    (2, "m", "One, two!", 1.0),  # P = 0: clipped by eps
    (2, "m_concise", "1, 2", 1.000001),  # P = 1e-6: clipped by eps
]
EXPECTED_EXCLUDED = {
    "ae-line-10": "invalid_row",
    "ae-7-m": "unknown_instruction",
    "ae-0-m@line-9": "duplicate_id",
    "ae-1-m_verbose": "preference_out_of_range",
    "ae-1-other": "preference_not_a_number",
    "ae-1-m_concise": "empty_response",
    "ae-1-other2": "identical_responses",
}
LABELLED = {"ae-0-m": 0.2, "ae-0-m_verbose": 0.5, "ae-0-m_concise": 0.1, "ae-0-other": 0.4, "ae-1-m": 1.0, "ae-2-m": 1.0, "ae-2-m_concise": 1 - 0.000001}


def odds(p: float) -> float:
    return p / (1 - p)


def by_hand(p1: float, p2: float) -> float:
    """P(1 beats 2) in Bradley–Terry, as an odds ratio: o1 / (o1 + o2) with o = p / (1 - p)."""
    return odds(p1) / (odds(p1) + odds(p2))


# derived pairs of the folder, contrast mode: a model against its variants (instruction 2: both clipped to eps = 0.01)
CONTRAST = {
    "ae-0-m-vs-m_concise": 4 / 13,  # odds 4 against 9
    "ae-0-m-vs-m_verbose": 0.8,  # odds 4 against 1
    "ae-0-m_concise-vs-m_verbose": 0.9,  # odds 9 against 1
    "ae-2-m-vs-m_concise": 0.5,
}


def write_folder(root: Path, annotations=ANNOTATIONS, readme: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "references.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in REFS)
    with gzip.open(root / "annotations.jsonl.gz", "wt", encoding="utf-8") as fh:
        for a in annotations:
            fh.write((a if isinstance(a, str) else json.dumps(dict(zip(("instruction_id", "generator", "output", "preference"), a)))) + "\n")
    if readme:
        (root / "README.md").write_text("From tatsu-lab/alpaca_eval, at commit cd543a1.\n")
    return root


def import_run(folder: Path, run: Path, **alpaca_eval) -> dict:
    from flows.import_labels import run_import_labels

    return run_import_labels(str(run), str(folder), source_format="alpaca-eval", alpaca_eval=alpaca_eval)


def read_run(run: Path) -> tuple[dict, dict]:
    from aifeedback.store import RunStore

    store = RunStore(run)
    rows = {r["pair_id"]: r for r in store.read_table("labels").to_pylist()}
    excluded = {e["item_id"]: e for e in store.read_table("labels", excluded=True).to_pylist()}
    return rows, excluded


def test_bradley_terry_against_odds_by_hand():
    from labelers.alpaca_eval import bradley_terry

    assert bradley_terry(0.8, 0.5, 0.01) == pytest.approx(0.8, abs=1e-12)
    assert bradley_terry(0.9, 0.6, 0.01) == pytest.approx((0.9 / 0.1) / (0.9 / 0.1 + 0.6 / 0.4), abs=1e-12)  # 9 / 10.5 = 6/7
    assert bradley_terry(0.6, 0.9, 0.01) == pytest.approx(1 / 7, abs=1e-12)  # swapping the two swaps the verdict
    assert bradley_terry(0.0, 1e-6, 0.01) == 0.5  # both below eps: clipped to the same value
    assert bradley_terry(1e-6, 0.999999, 0.01) == pytest.approx(by_hand(0.01, 0.99), abs=1e-12)
    assert bradley_terry(0.0, 1e-6, 1e-9) == pytest.approx(by_hand(1e-9, 1e-6), rel=1e-6)  # a smaller eps keeps the tail


def test_folder_becomes_labels_exclusions_and_derived_pairs(tmp_path):
    folder = write_folder(tmp_path / "ae")
    s = import_run(folder, tmp_path / "run", derive_pairs="contrast")
    rows, excluded = read_run(tmp_path / "run")
    # every annotation line is a pair or an exclusion; the derived pairs come on top
    assert s["annotation_rows"] == len(ANNOTATIONS) == 14 and s["derived_pairs"] == len(CONTRAST)
    assert s["n_in"] == 14 + 4 == s["n_out"] + s["n_excluded"] and s["n_excluded"] == len(EXPECTED_EXCLUDED)
    assert {k: e["reason"] for k, e in excluded.items()} == EXPECTED_EXCLUDED
    assert json.loads(excluded["ae-1-m_verbose"]["raw"])["preference"] == 2.5 and "got 2.5" in excluded["ae-1-m_verbose"]["detail"]
    assert set(rows) == set(LABELLED) | set(CONTRAST)
    for pid, pa in LABELLED.items():
        r = rows[pid]
        prov = json.loads(r["raw"])
        assert r["p_a"] == pytest.approx(pa, abs=1e-12), pid
        assert r["prob_source"] == "imported:probability" and r["labeler_model"] == "gpt-4-turbo (alpaca_eval weighted_alpaca_eval_gpt4_turbo)" and r["backend"] == "imported"
        assert r["response_a"] == REFS[int(prov["instruction_id"])]["reference_output"] and r["messages"] == [{"role": "user", "content": REFS[int(prov["instruction_id"])]["instruction"]}]
        assert (prov["source"], prov["alpaca_eval_commit"], f"ae-{prov['instruction_id']}-{prov['generator']}") == ("annotations.jsonl.gz", "cd543a1", pid)
    assert rows["ae-0-m"]["response_b"] == "Red." and rows["ae-0-m"]["hard_label"] == "B"  # the first m, not the duplicate
    for pid, pa in CONTRAST.items():
        r = rows[pid]
        prov = json.loads(r["raw"])
        assert r["p_a"] == pytest.approx(pa, abs=1e-12), pid
        assert r["prob_source"] == "derived:bradley_terry" and prov["derived"] == "bradley_terry" and prov["eps"] == 0.01
        src = [rows[p] for p in prov["from"]]  # the two annotation pairs it came from, both labelled
        assert [x["response_b"] for x in src] == [r["response_a"], r["response_b"]] and f"{prov['from'][0]}-vs-{prov['from'][1].split('-', 2)[2]}" == pid
        assert prov["p_beats_reference"] == pytest.approx([1 - x["p_a"] for x in src], abs=1e-12)
    from aifeedback.store import RunStore

    m = RunStore(tmp_path / "run").manifest("labels")
    assert m["format"] == "alpaca-eval" and m["alpaca_eval"]["alpaca_eval_commit"] == "cd543a1" and m["alpaca_eval"]["config"]["derive_pairs"] == "contrast"
    assert m["n_in"] == m["n_out"] + m["n_excluded"] == 18


def test_derive_modes_share_ids_and_eps_is_applied(tmp_path):
    folder = write_folder(tmp_path / "ae")
    none = import_run(folder, tmp_path / "none")
    assert none["derived_pairs"] == 0 and none["n_in"] == 14
    import_run(folder, tmp_path / "all", derive_pairs="all", eps=1e-9)
    rows, _ = read_run(tmp_path / "all")
    derived = {k: r["p_a"] for k, r in rows.items() if r["prob_source"] == "derived:bradley_terry"}
    # instruction 0: 4 usable generators, 6 pairs; instruction 1: 1 usable; instruction 2: 2 usable, 1 pair
    assert len(derived) == 7 and set(CONTRAST) <= set(derived)
    assert derived["ae-0-m-vs-other"] == pytest.approx(by_hand(0.8, 0.6), abs=1e-12)  # odds 4 against 1.5
    assert derived["ae-0-m_concise-vs-other"] == pytest.approx(by_hand(0.9, 0.6), abs=1e-12)
    assert derived["ae-2-m-vs-m_concise"] == pytest.approx(by_hand(1e-9, 1e-6), rel=1e-6)  # eps 1e-9 keeps the 1e-6


def test_cli_help_errors_and_export(tmp_path):
    folder = write_folder(tmp_path / "ae", readme=False)
    runner = CliRunner()
    help_text = runner.invoke(app, ["import-labels", "--help"], env={"COLUMNS": "300"}).output
    assert "--derive-pairs" in help_text and "Bradley-Terry" in help_text and "--instructions" in help_text
    bad = runner.invoke(app, ["import-labels", str(folder), "--format", "alpaca-eval", "--run-dir", str(tmp_path / "x"), "--derive-pairs", "some"])
    assert bad.exit_code == 2 and "derive_pairs" in bad.output and "'contrast'" in bad.output, bad.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"pair_id": "p", "prompt": "q", "response_a": "a", "response_b": "b"}\n')
    with_input = runner.invoke(app, ["import-labels", str(folder), "--format", "alpaca-eval", "--run-dir", str(tmp_path / "x"), "--input", str(pairs)])
    assert with_input.exit_code == 2 and "hold their own pairs" in with_input.output, with_input.output
    no_judge = runner.invoke(app, ["import-labels", str(pairs), "--run-dir", str(tmp_path / "x")])
    assert no_judge.exit_code == 2 and "pass --judge NAME" in no_judge.output, no_judge.output
    not_a_folder = runner.invoke(app, ["import-labels", str(tmp_path), "--format", "alpaca-eval", "--run-dir", str(tmp_path / "x")])
    assert not_a_folder.exit_code == 2 and "annotations.jsonl[.gz] and references.jsonl[.gz]" in not_a_folder.output, not_a_folder.output

    run = tmp_path / "run"
    ok = runner.invoke(app, ["import-labels", str(folder / "annotations.jsonl.gz"), "--format", "alpaca-eval", "--run-dir", str(run), "--derive-pairs", "contrast", "--instructions", "1"])
    assert ok.exit_code == 0, ok.output
    # instruction 0's five rows (one a repeat), the row of an unknown instruction and the unreadable line; 3 derived pairs
    assert "import-labels (alpaca-eval): 10 pairs in = 7 labelled + 3 excluded; 7 annotation rows, 3 derived pairs" in ok.output, ok.output
    rows, excluded = read_run(run)
    assert set(excluded) == {"ae-0-m@line-9", "ae-7-m", "ae-line-10"}
    assert json.loads(rows["ae-0-m"]["raw"])["alpaca_eval_commit"] is None  # no README: no commit claimed

    from labelers.agreement import judge_from_run

    assert judge_from_run("gpt4t", str(run)).verdicts["ae-0-m-vs-m_verbose"] == "A"
    exp = runner.invoke(app, ["export", "--run-dir", str(run), "--to-dir", str(tmp_path / "hub")])
    assert exp.exit_code == 0, exp.output
    import pyarrow.parquet as pq

    train = sum(pq.read_table(f).num_rows for f in (tmp_path / "hub" / "data" / "preferences").glob("*.parquet"))
    assert train == len(rows) - sum(r["hard_label"] == "tie" for r in rows.values())


def test_real_alpaca_eval_files(shared_data, tmp_path):
    folder = shared_data / "alpaca-eval"
    if not (folder / "annotations.jsonl.gz").is_file():
        pytest.skip(f"AlpacaEval annotations not present in {folder}")
    refs = {r["instruction_id"]: r for r in map(json.loads, gzip.open(folder / "references.jsonl.gz", "rt", encoding="utf-8"))}
    raw = [json.loads(line) for line in gzip.open(folder / "annotations.jsonl.gz", "rt", encoding="utf-8")]
    unusable = sum(not (r["output"] or "").strip() or r["output"].strip() == refs[r["instruction_id"]]["reference_output"].strip() for r in raw)
    s = import_run(folder, tmp_path / "run")
    assert s["annotation_rows"] == len(raw) == 10_461 and s["n_in"] == 10_461 == s["n_out"] + s["n_excluded"]
    assert s["n_excluded"] == unusable  # empty outputs and one copy of the reference; every preference is in [1, 2]
    rows, excluded = read_run(tmp_path / "run")
    assert {e["reason"] for e in excluded.values()} <= {"empty_response", "identical_responses"}
    assert len({json.loads(r["raw"])["generator"] for r in rows.values()}) == 13
    spot = raw[5000]
    r = rows[f"ae-{spot['instruction_id']}-{spot['generator']}"]
    assert r["p_a"] == pytest.approx(2 - spot["preference"], abs=1e-12) and r["response_b"] == spot["output"]
    assert r["response_a"] == refs[spot["instruction_id"]]["reference_output"] and json.loads(r["raw"])["alpaca_eval_commit"] == "cd543a1"


@pytest.mark.slow
def test_train_rm_accepts_an_imported_run(tmp_path):
    """A tiny BERT backbone built from a config (no hub) trains two steps on an imported run with derived pairs."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aifeedback.models import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1, max_position_embeddings=128)).save_pretrained(tmp_path / "backbone")
    tok.save_pretrained(tmp_path / "backbone")
    s = import_run(write_folder(tmp_path / "ae"), tmp_path / "run", derive_pairs="contrast")
    out = tmp_path / "rm"
    res = CliRunner().invoke(app, ["train-rm", "--run-dir", str(tmp_path / "run"), "--out", str(out), "--backbone", str(tmp_path / "backbone"), "--set", "max_steps=2", "--set", "max_length=32", "--set", "batch_size=4"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "aifeedback_reward_config.json").read_text())
    assert saved["backbone"] == str(tmp_path / "backbone") and (out / "config.json").is_file()
    assert f"'n_train': {s['n_out']}" in res.output  # every labelled pair, derived ones included
