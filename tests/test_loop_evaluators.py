"""Several evaluators in `aifeedback loop`: how they are named, their agreement and evaluator cards by hand, and a
1-iteration loop judged by two tiny reward models, then re-run with a third (only the eval stage runs again)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from test_loop import _cli, loop_sets, prompts_and_gold, tiny_policy


def test_evaluator_setting_takes_one_folder_a_comma_list_a_yaml_list_and_names():
    from aifeedback.config import build_config, parse_overrides
    from aifeedback.errors import ConfigError
    from trainers.loop.config import LoopConfig
    from trainers.loop.evaluators import Evaluator

    assert LoopConfig(evaluator="runs/rms/evaluator").evaluators == [Evaluator("evaluator", "runs/rms/evaluator")]
    cfg = build_config(LoopConfig, None, parse_overrides(["evaluator=runs/rms/evaluator, ood=runs/other/evaluator"]))
    assert cfg.evaluators == [Evaluator("evaluator", "runs/rms/evaluator"), Evaluator("ood", "runs/other/evaluator")]
    assert build_config(LoopConfig, None, parse_overrides(["evaluator=[a/x, b/y]"])).evaluators == [Evaluator("x", "a/x"), Evaluator("y", "b/y")]
    assert LoopConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # RUN/loop_config.json validates back
    with pytest.raises(ConfigError, match="evaluators share the name rm: name each NAME=PATH"):
        build_config(LoopConfig, None, parse_overrides(["evaluator=a/rm,b/rm"]))
    with pytest.raises(ConfigError, match="names no folder"):
        build_config(LoopConfig, None, parse_overrides(["evaluator=a/x,,b/y"]))


def test_the_same_response_text_is_a_tie_whatever_the_reward_noise():
    """A policy that barely moved repeats the initial policy's texts; a reward model scores one text a few ulps apart
    in batches of other widths. Known answer: 2 of 4 pairs are the same text (rewards 1e-7 and 2e-7 higher), one wins, one loses:
    win rate (0.5 + 0.5 + 1 + 0) / 4, and both same-text pairs are ties in the agreement."""
    from trainers.loop.evaluators import verdicts
    from trainers.loop.stats import win_stats

    base = [{"prompt_id": p, "sample_index": 0, "reward": 0.1, "response": f"same {p}", "tokens": 5} for p in "wxyz"]
    new = [{"prompt_id": "w", "sample_index": 0, "reward": 0.1 + 1e-7, "response": "same w", "tokens": 5},  # noise above
           {"prompt_id": "x", "sample_index": 0, "reward": 0.1 + 2e-7, "response": "same x", "tokens": 5},
           {"prompt_id": "y", "sample_index": 0, "reward": 0.9, "response": "other y", "tokens": 7},
           {"prompt_id": "z", "sample_index": 0, "reward": -0.9, "response": "other z", "tokens": 3}]
    assert verdicts(new, base) == {("w", 0): 0, ("x", 0): 0, ("y", 0): 1, ("z", 0): -1}
    assert win_stats(new, base, 50, 0)["win_rate"] == pytest.approx(0.5)


def test_pair_agreement_by_hand_with_ties_left_out():
    from trainers.loop.evaluators import agreement_matrix, pair_agreement, verdicts

    base = [{"prompt_id": p, "sample_index": 0, "reward": 0.0} for p in "wxyz"]
    # A: new wins w, loses x, ties y, wins z; B: wins w, x, y, loses z; C: a copy of B
    a = verdicts([{"prompt_id": p, "sample_index": 0, "reward": r} for p, r in zip("wxyz", (1.0, -2.0, 0.0, 0.5))], base)
    b = verdicts([{"prompt_id": p, "sample_index": 0, "reward": r} for p, r in zip("wxyz", (3.0, 1.0, 1.0, -1.0))], base)
    assert a == {("w", 0): 1, ("x", 0): -1, ("y", 0): 0, ("z", 0): 1}
    ab, ac, bc = pair_agreement({"A": a, "B": b, "C": dict(b)})
    # y is a tie for A: left out of A's pairs. A and B compared on w, x, z; the same winner on w only
    assert (ab["a"], ab["b"], ab["n"], ab["n_tied"]) == ("A", "B", 3, 1) and ab["agreement"] == pytest.approx(1 / 3)
    # chance: A picks new on 2 of 3, B on 2 of 3: 2/3 * 2/3 + 1/3 * 1/3
    assert ab["chance"] == pytest.approx(5 / 9)
    assert ac == {**ab, "b": "C"} and (bc["agreement"], bc["n"], bc["n_tied"], bc["chance"]) == (1.0, 4, 0, pytest.approx(0.75**2 + 0.25**2))
    assert pair_agreement({"A": {("w", 0): 0}, "B": {("w", 0): 1}}) == [{"a": "A", "b": "B", "agreement": None, "n": 0, "n_tied": 1, "chance": None}]
    m = agreement_matrix(["A", "B", "C"], [ab, ac, bc])
    assert m["agreement"] == [[1.0, ab["agreement"], ab["agreement"]], [ab["agreement"], 1.0, 1.0], [ab["agreement"], 1.0, 1.0]]


def test_paired_difference_against_prefer_longer_by_hand():
    from trainers.loop.stats import paired_difference

    # always right where the baseline is always wrong: +1 in every replicate; the same hits: 0 in every replicate
    assert paired_difference([True] * 5, [False] * 5) == {"difference": 1.0, "ci": [1.0, 1.0], "n_boot": 2000}
    assert paired_difference([True, False, True], [True, False, True])["ci"] == [0.0, 0.0]
    # two pairs, differences +1 and 0: a replicate's mean is 0, 1/2 or 1, each end with probability 1/4 > 2.5%
    d = paired_difference([True, True], [False, True])
    assert d["difference"] == 0.5 and d["ci"] == [0.0, 1.0]
    # 100 pairs, 10 more hits: the interval is about +/- 2 sd = 2 sqrt(0.1 - 0.01) / 10 = 0.06 around 0.1
    d = paired_difference([True] * 60 + [False] * 40, [True] * 50 + [False] * 50, n_boot=4000, seed=1)
    assert d["difference"] == pytest.approx(0.1) and 0.02 <= d["ci"][0] <= 0.05 and 0.15 <= d["ci"][1] <= 0.18
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([True], [True, False])


def test_set_accuracy_by_hand_equal_lengths_miss_for_prefer_longer():
    from trainers.loop.evaluators import set_accuracy

    m = [{"role": "user", "content": "q"}]
    rows = [
        {"messages": m, "response_a": "long answer", "response_b": "short", "human": "A"},  # RM right, longer right
        {"messages": m, "response_a": "long answer", "response_b": "short", "human": "B"},  # RM right, longer wrong
        {"messages": m, "response_a": "same", "response_b": "size", "human": "A"},  # RM wrong, equal lengths: longer wrong
        {"messages": m, "response_a": "x", "response_b": "yyyy", "human": "B"},  # RM right, longer right
    ]
    s = set_accuracy("toy", rows, [2.0, 0.0, 0.0, 0.1], [1.0, 1.0, 1.0, 0.5], in_domain=False)
    assert (s.n, s.accuracy, s.prefer_longer, s.in_domain) == (4, 0.75, 0.5, False)
    # per-pair differences 0, +1, 0 (both wrong), 0: a replicate is 0 with probability (3/4)^4 = 32%, and 3/4 or
    # more with 4 (1/4)^3 (3/4) + (1/4)^4 = 5.1% (> 2.5%), all four +1 with 0.4% (< 2.5%)
    assert s.vs_prefer_longer_ci == [0.0, 0.75]
    with pytest.raises(ValueError, match="human A or B"):
        set_accuracy("toy", rows + [{**rows[0], "human": "tie"}], [0.0] * 5, [0.0] * 5, in_domain=False)


def test_evaluator_card_round_trip_bad_card_and_readme_provenance(tmp_path):
    from aifeedback.errors import InputError
    from trainers.loop.evaluators import EVALUATION_FILE, describe, read_card, write_card

    card = {"training_data": "PandaLM human majority, 311 items", "sets": [{"set": "llmbar-natural", "n": 100, "accuracy": 0.46, "prefer_longer": 0.56, "vs_prefer_longer_ci": [-0.16, 0.04], "in_domain": False}]}
    write_card(tmp_path, card)
    assert read_card(tmp_path).model_dump() == card
    info = describe(tmp_path)
    assert (info["training_data"], info["training_data_source"], info["sets"]) == (card["training_data"], EVALUATION_FILE, card["sets"])
    (tmp_path / EVALUATION_FILE).write_text(json.dumps({"training_data": "x", "sets": [{"set": "s", "accuracy": 0.5}]}))  # n and in_domain missing
    with pytest.raises(InputError, match=r"evaluation.json is not an evaluator card .*in_domain.*write_card"):
        read_card(tmp_path)
    assert describe(tmp_path)["card_error"].startswith(str(tmp_path / EVALUATION_FILE))  # the report shows it instead of failing
    # no card: the provenance RewardTrainer.save writes into README.md, without its bookkeeping keys
    other = tmp_path / "other"
    other.mkdir()
    assert describe(other)["training_data"] is None
    (other / "README.md").write_text('# RM\n\n## Provenance\n```json\n{"labels_run": "runs/a", "labeler": "gpt", "versions": {"torch": "2"}}\n```\n')
    assert (describe(other)["training_data"], describe(other)["training_data_source"]) == ("labels_run runs/a, labeler gpt", "README.md provenance")


def test_independence_warning_applies_to_each_evaluator(tiny_rm, tmp_path):
    from trainers.loop.config import INDEPENDENCE_WARNING, LoopConfig, check_inputs

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.warns(UserWarning, match="evaluator own is the labeler's own reward model"):
        notes = check_inputs(LoopConfig(prompts=str(prompts), labeler=f"rm:{tiny_rm(0)}", evaluator=f"other={tiny_rm(1)},own={tiny_rm(0)}"))
    assert notes == [INDEPENDENCE_WARNING.format(name="own")]
    assert check_inputs(LoopConfig(prompts=str(prompts), labeler=f"rm:{tiny_rm(0)}", evaluator=f"other={tiny_rm(1)}")) == []


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_rm):
    from trainers.loop.evaluators import write_card

    d = tmp_path_factory.mktemp("evalworld")
    prompts, gold = prompts_and_gold(d)
    carded = shutil.copytree(tiny_rm(1), d / "carded")  # the shared tiny RM stays read-only: the card goes on a copy
    write_card(carded, {"training_data": "16 toy pairs, kind and long wins", "sets": [{"set": "toy-ood", "n": 40, "accuracy": 0.425, "prefer_longer": 0.675, "vs_prefer_longer_ci": [-0.45, -0.05], "in_domain": False}, {"set": "toy-held-out", "n": 8, "accuracy": 0.875, "in_domain": True}]})
    # loop_sets reads "evaluator"; the tests pass theirs
    return {"policy": tiny_policy(d / "policy"), "labeler": tiny_rm(0), "one": carded, "two": tiny_rm(2), "evaluator": carded, "prompts": prompts, "gold": gold}


def _by_evaluator(path, name):
    import pyarrow.parquet as pq

    return [r for r in pq.read_table(path).to_pylist() if r["evaluator"] == name]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_evaluators_figures_by_hand_then_a_third_reruns_only_eval(world, tmp_path):
    from labelers.rm_labeler import RewardModelScorer
    from trainers.loop.evaluators import verdicts
    from trainers.loop.rundir import STAGES, events, iter_dir, marker
    from trainers.loop.stats import win_stats

    run = tmp_path / "loop"
    two = f"one={world['one']},two={world['two']}"
    # 6 x 4 held-out pairs and a DPO step large enough that some new samples differ from the initial ones (others stay equal: ties)
    sets = {"iterations": 1, "n_eval_prompts": 6, "eval_samples": 4, "dpo.lr": 5e-2}
    p = _cli(["loop", "--run-dir", str(run), *loop_sets(world, **sets, evaluator=two)])
    out = p.communicate()[0]
    assert p.returncode == 0, out[-4000:]
    ev = json.loads(marker(run, 1, "eval").read_text())
    assert [v["name"] for v in ev["evaluators"]] == ["one", "two"] and ev["samples_reused"] is False

    # each evaluator's rewards are its own model's: scored again here, outside the loop, from the stored texts
    new_rows = {n: _by_evaluator(iter_dir(run, 1) / "eval.parquet", n) for n in ("one", "two")}
    base_rows = {n: _by_evaluator(run / "baseline" / "eval.parquet", n) for n in ("one", "two")}
    for n in ("one", "two"):
        scorer = RewardModelScorer(world[n])
        for rows in (new_rows[n], base_rows[n]):
            assert len(rows) == 6 * 4
            assert [r["reward"] for r in rows] == pytest.approx(scorer.score([f"user: {r['prompt']}" for r in rows], [r["response"] for r in rows]), abs=1e-5)
    assert [r["reward"] for r in new_rows["one"]] != pytest.approx([r["reward"] for r in new_rows["two"]], abs=1e-3)

    # the win rates are win_stats of each evaluator's stored rows (same bootstrap seed, seed + k)
    for v in ev["evaluators"]:
        s = win_stats(new_rows[v["name"]], base_rows[v["name"]], 200, 0 + 1)
        assert {k: v[k] for k in s} == s and v["independent"] is True
    # agreement counted by hand: the pairs where both evaluators prefer one side, and on how many they pick the same
    sign = {n: {(r["prompt_id"], r["sample_index"]): r["reward"] for r in base_rows[n]} for n in ("one", "two")}
    pick = {n: {(r["prompt_id"], r["sample_index"]): math.copysign(1, r["reward"] - sign[n][(r["prompt_id"], r["sample_index"])]) if r["reward"] != sign[n][(r["prompt_id"], r["sample_index"])] else 0 for r in new_rows[n]} for n in ("one", "two")}
    assert pick["one"] == verdicts(new_rows["one"], base_rows["one"])
    both = [k for k in pick["one"] if pick["one"][k] and pick["two"][k]]
    assert 0 < len(both) < 24  # pairs compared and pairs with a tie: the count below tests both
    (agr,) = ev["agreement"]
    assert (agr["a"], agr["b"], agr["n"], agr["n_tied"]) == ("one", "two", len(both), 24 - len(both))
    assert agr["agreement"] == pytest.approx(sum(pick["one"][k] == pick["two"][k] for k in both) / len(both))

    report = json.loads((run / "report.json").read_text())
    (r,) = report.values()
    assert list(r["evaluators"]) == ["one", "two"]
    assert r["evaluators"]["one"]["training_data"] == "16 toy pairs, kind and long wins" and r["evaluators"]["one"]["sets"][0]["set"] == "toy-ood"
    assert r["evaluators"]["two"]["training_data"] is None and r["evaluators"]["two"]["sets"] == []
    assert r["iterations"][0]["eval"]["evaluators"] == ev["evaluators"] and r["iterations"][0]["agreement_matrix"]["agreement"][0][1] == agr["agreement"]
    html = (run / "report.html").read_text()
    for v in ev["evaluators"]:
        assert f"<td>1</td><td>{v['name']}</td><td>{100 * v['win_rate']:.1f}%</td>" in html
    assert f"<td>one / two</td><td>{100 * agr['agreement']:.1f}%</td>" in html
    assert "16 toy pairs, kind and long wins" in html and "toy-ood: 42.5% (prefer-longer 67.5%; difference [-45.0, -5.0] points), n=40" in html and "toy-held-out: 87.5%, n=8" in html
    assert html.count("not recorded") == 3  # evaluator two: training data, out-of-domain and in-domain accuracy

    # a re-run adding a third evaluator (the labeler's own RM) runs only the eval stage, on the stored samples
    before = {s: marker(run, 1, s).stat().st_mtime_ns for s in ("sample", "label", "train")}
    n_events = len(events(run))
    p = _cli(["loop", "--run-dir", str(run), *loop_sets(world, **sets, evaluator=f"{two},own={world['labeler']}")])
    out = p.communicate()[0]
    assert p.returncode == 0, out[-4000:]
    rerun = events(run)[n_events:]
    assert [(e["iteration"], e["stage"]) for e in rerun if e["event"] == "started"] == [(1, "eval")]
    assert sorted((e["iteration"], e["stage"]) for e in rerun if e["event"] == "skipped") == [(1, s) for s in sorted(set(STAGES) - {"eval"})]
    assert {s: marker(run, 1, s).stat().st_mtime_ns for s in before} == before
    ev3 = json.loads(marker(run, 1, "eval").read_text())
    assert [v["name"] for v in ev3["evaluators"]] == ["one", "two", "own"] and ev3["samples_reused"] is True
    assert [v["independent"] for v in ev3["evaluators"]] == [True, True, False] and "evaluator own is the labeler's own reward model" in out
    assert ev3["evaluators"][:2] == ev["evaluators"]  # the same samples, the same rewards, the same figures
    assert [(a["a"], a["b"]) for a in ev3["agreement"]] == [("one", "two"), ("one", "own"), ("two", "own")]
    own = win_stats(_by_evaluator(iter_dir(run, 1) / "eval.parquet", "own"), _by_evaluator(run / "baseline" / "eval.parquet", "own"), 200, 1)
    assert {k: ev3["evaluators"][2][k] for k in own} == own
    html = (run / "report.html").read_text()
    assert "no: the labeler's own reward model" in html and "<td>1</td><td>own</td>" in html


def test_a_run_from_before_several_evaluators_reports_its_one_evaluator_and_its_samples_are_reused(tmp_path):
    """A legacy eval marker (top-level win rate and one `evaluator` folder) and eval.parquet (one `reward` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainers.loop.report import write_report
    from trainers.loop.rundir import iter_dir, marker
    from trainers.loop.stages import _stored_samples

    run = tmp_path / "old"
    legacy = {"n": 8, "n_prompts": 4, "win_rate": 0.625, "win_rate_ci": [0.5, 0.75], "lc_win_rate": 0.6, "lc_win_rate_ci": [0.45, 0.7], "mean_tokens_new": 9.0, "mean_tokens_initial": 8.0, "mean_reward_new": 0.1, "mean_reward_initial": 0.0, "kl_to_initial": 0.2, "evaluator": "/gone/rms/evaluator", "stage": "eval", "iteration": 1, "seconds": 3.0}
    marker(run, 1, "eval").parent.mkdir(parents=True)
    marker(run, 1, "eval").write_text(json.dumps(legacy))
    (run / "loop_config.json").write_text(json.dumps({"evaluator": "/gone/rms/evaluator", "labeler": "llm"}))
    data = write_report({"old": run}, tmp_path / "out")
    assert list(data["old"]["evaluators"]) == ["evaluator"] and data["old"]["evaluators"]["evaluator"]["card_error"] == "folder /gone/rms/evaluator not found"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<td>1</td><td>evaluator</td><td>62.5%</td><td>50.0% - 75.0%</td><td>60.0%</td>" in html
    held = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(2)]
    rows = [{"prompt_id": f"p{i}", "sample_index": j, "prompt": f"q{i}", "response": f"r{i}{j}", "tokens": 3, "chars": 3, "reward": 0.5, "logp_new": -1.0, "logp_ref": -2.0} for i in range(2) for j in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), iter_dir(run, 1) / "eval.parquet")
    assert _stored_samples(iter_dir(run, 1) / "eval.parquet", held, 2, need_logp=True) == [{k: v for k, v in r.items() if k != "reward"} for r in rows]
    assert _stored_samples(iter_dir(run, 1) / "eval.parquet", held, 3, need_logp=True) is None  # other sizes: sample again
