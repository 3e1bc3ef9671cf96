"""A reward model as a labeler: position-free by construction, sigmoid((r_A - r_B)/T) by hand, bad folders, and `label --labeler rm:PATH`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _pairs(n=6):
    return [
        {"pair_id": f"p{i}", "prompt_id": f"q{i}", "messages": [{"role": "user", "content": f"question {i}"}], "response_a": "Sure, a kind and full answer." if i % 2 else f"No {i}.", "response_b": f"No {i}." if i % 2 else "Sure, a kind and full answer, with more."}
        for i in range(n)
    ]


def _by_hand(rm_dir: Path, pairs: list[dict]) -> list[tuple[float, float]]:
    """r_A, r_B straight from transformers (not through the labeler's code)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    out = []
    with torch.no_grad():
        for p in pairs:
            prompt = "user: " + p["messages"][0]["content"]
            ra = model(**tok(prompt, p["response_a"], truncation="longest_first", max_length=64, return_tensors="pt")).logits[0, 0].item()
            rb = model(**tok(prompt, p["response_b"], truncation="longest_first", max_length=64, return_tensors="pt")).logits[0, 0].item()
            out.append((ra, rb))
    return out


@pytest.mark.parametrize("length_head", [False, True])
def test_both_orders_identical_and_equal_to_sigmoid_of_reward_difference_over_T(tiny_rm, length_head):
    from aifeedback.preference import Derivation, derive
    from aifeedback.records import LABEL_OUTPUTS
    from labelers.rm_labeler import PROB_SOURCE, RMLabelJob

    rm = tiny_rm(3, length_head=length_head)
    pairs = _pairs()
    T = 0.37
    job = RMLabelJob(str(rm), temperature=T, tie_margin=0.0, max_length=64)
    rows, excluded, _ = job.compute(pairs, "k")
    assert not excluded and len(rows) == len(pairs)
    assert set(rows[0]) - {"__item__"} <= set(LABEL_OUTPUTS.names)  # the stored shape of any label row
    swapped, _, _ = job.compute([{**p, "response_a": p["response_b"], "response_b": p["response_a"]} for p in pairs], "k2")
    for row, sw, (ra, rb) in zip(rows, swapped, _by_hand(rm, pairs)):
        d = derive(row, Derivation(tie_margin=0.0, temperature=T))
        assert row["prob_source"] == PROB_SOURCE and row["mode"] == "rm"
        assert d["p_ab"] == d["p_ba"] and d["consistent"] is True and d["position_preferred"] is None  # both orders: the same value
        assert d["p_a"] == pytest.approx(1 / (1 + math.exp(-(ra - rb) / T)), rel=1e-6, abs=1e-9)
        d_sw = derive(sw, Derivation(tie_margin=0.0, temperature=T))
        assert d_sw["p_a"] == pytest.approx(1 - d["p_a"], rel=1e-6, abs=1e-9)  # swapping the responses mirrors the label
        assert json.loads(row["raw"])["r_a"] == pytest.approx(ra, rel=1e-5, abs=1e-6)


def test_temperature_is_fitted_on_a_gold_slice_with_the_existing_temperature_scaling(tiny_rm):
    from labelers.metrics import fit_temperature
    from labelers.rm_labeler import RewardModelScorer, fit_rm_temperature, sigmoid

    rm = tiny_rm(0)
    gold = [{**p, "human": "A" if i % 3 else "B"} for i, p in enumerate(_pairs(9))]
    scorer = RewardModelScorer(rm)
    fit = fit_rm_temperature(scorer, gold)
    raw = [sigmoid(a - b) for a, b in _by_hand(rm, gold)]
    assert fit["temperature"] == pytest.approx(fit_temperature(raw, [1 if g["human"] == "A" else 0 for g in gold]), rel=1e-3)
    # the maximum-likelihood T by a numpy grid search: a known answer. This tiny RM's reward differences are ~3e-4,
    # so the likelihood keeps rising as T falls and both give fit_temperature's documented lower bound, T_MIN.
    from test_known_answers import temperature_by_grid

    assert fit["temperature"] == pytest.approx(temperature_by_grid(raw, [1 if g["human"] == "A" else 0 for g in gold]), rel=1e-3)
    assert fit["n_gold"] == 9


def test_a_folder_that_is_not_a_reward_model_is_a_clear_message(tmp_path):
    from aifeedback.errors import InputError
    from labelers.rm_labeler import RMLabelJob, check_reward_model_dir

    with pytest.raises(InputError, match="does not exist"):
        check_reward_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        RMLabelJob(str(tmp_path / "empty"))
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_labels": 2}))
    with pytest.raises(InputError, match="LlamaForCausalLM.*not a \\*ForSequenceClassification.*aifeedback train-rm"):
        check_reward_model_dir(lm)
    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"}}))
    with pytest.raises(InputError, match="3 outputs"):
        check_reward_model_dir(clf)


def _cli(args, cwd=REPO):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_label_cli_with_an_rm_labeler_writes_label_rows_that_export_reads(tmp_path, tiny_rm):
    from aifeedback.preference import trl_pair
    from aifeedback.store import RunStore

    rm = tiny_rm(0)
    pairs = _pairs(8)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"pair_id": p["pair_id"], "prompt": p["messages"][0]["content"], "response_a": p["response_a"], "response_b": p["response_b"]}) + "\n" for p in pairs) + json.dumps({"pair_id": "bad", "prompt": "q", "response_a": None, "response_b": "x"}) + "\n" + json.dumps({"pair_id": "same", "prompt": "q", "response_a": "ok ", "response_b": "ok"}) + "\n")
    run = tmp_path / "run"
    out = _cli(["label", "--run-dir", str(run), "--input", str(f), "--labeler", f"rm:{rm}", "--set", "tie_margin=0.0"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RunStore(run)
    rows = store.read_table("labels").to_pylist()
    excl = store.read_table("labels", excluded=True).to_pylist()
    # count in = count out + excluded; the exclusions are the LLM labeler's (aifeedback.records.pair_problem)
    assert len(rows) + len(excl) == 10 and sorted(e["reason"] for e in excl) == ["identical_responses", "missing_response"]
    assert all(r["backend"] == "reward_model" and r["labeler_model"] == f"rm:{rm.resolve()}" and r["p_ab"] == r["p_ba"] for r in rows)
    assert all(trl_pair(r)["chosen_was"] == r["hard_label"] for r in rows)  # tie margin 0: no ties
    exp = _cli(["export", "--run-dir", str(run), "--to-dir", str(tmp_path / "hub")])
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    bad = _cli(["label", "--run-dir", str(tmp_path / "r2"), "--input", str(f), "--labeler", f"rm:{tmp_path}"])
    assert bad.returncode == 2 and "not a reward model" in bad.stdout + bad.stderr
