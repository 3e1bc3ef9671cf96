"""`aifeedback loop` end to end on a tiny Llama (from a config, SmolLM2 tokenizer) and tiny reward models; resume after kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_policy(path: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aifeedback.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prompts_and_gold(d: Path) -> tuple[Path, Path]:
    """10 loop prompts and a 12-pair gold file (the kinder, longer answer is the human's choice) written in ``d``."""
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write one short sentence about topic number {i}."}) + "\n" for i in range(10)))
    gold = d / "gold.jsonl"
    gold.write_text("".join(json.dumps({"prompt": f"q {i}", "response_a": "Sure, a kind and full answer." if i % 2 else "No.", "response_b": "No." if i % 2 else "Sure, a kind and full answer.", "human": "A" if i % 2 else "B"}) + "\n" for i in range(12)))
    return prompts, gold


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory, tiny_rm):
    d = tmp_path_factory.mktemp("loopworld")
    prompts, gold = prompts_and_gold(d)
    return {"policy": tiny_policy(d / "policy"), "labeler": tiny_rm(0), "evaluator": tiny_rm(1), "prompts": prompts, "gold": gold, "dir": d}


def loop_sets(w: dict, **extra) -> list[str]:
    sets = {
        "policy": w["policy"], "prompts": w["prompts"], "n_train_prompts": 4, "n_eval_prompts": 4, "iterations": 2, "n_responses": 2, "max_new_tokens": 8,
        "gen_batch_size": 8, "labeler": f"rm:{w['labeler']}", "gold": w["gold"], "evaluator": w["evaluator"], "dpo.batch_size": 2, "dpo.max_length": 64, "dpo.lr": 1e-3, "n_boot": 200, "label.tie_margin": 0.0, **extra,
    }
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_two_iterations_end_to_end_then_kill_during_iteration_2_training_redoes_only_that_stage(tiny_world, tmp_path):
    from aifeedback.store import RunStore
    from trainers.loop.rundir import STAGES, events, iter_dir, marker

    run = tmp_path / "loop"
    p = _cli(["loop", "--run-dir", str(run), *loop_sets(tiny_world)], start_new_session=True)
    killed = False
    while p.poll() is None:  # kill -9 as soon as iteration 2's preference step has started
        if (iter_dir(run, 2) / "_stages" / "train.started").is_file() and not marker(run, 2, "train").is_file():
            time.sleep(0.3)
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    out = p.communicate()[0]
    assert killed, f"iteration 2's training never started (or finished before the kill):\n{out[-3000:]}"
    assert marker(run, 1, "eval").is_file() and marker(run, 2, "label").is_file() and not marker(run, 2, "train").is_file()
    before = {(k, s): marker(run, k, s).stat().st_mtime_ns for k in (1, 2) for s in STAGES if marker(run, k, s).is_file()}
    n_events = len(events(run))

    p = _cli(["loop", "--run-dir", str(run), *loop_sets(tiny_world)])
    out = p.communicate()[0]
    assert p.returncode == 0, out[-4000:]

    # the re-run redid only iteration 2's train stage (and then ran its eval, which had not started)
    rerun = events(run)[n_events:]
    ran = [(e["iteration"], e["stage"]) for e in rerun if e["event"] == "started"]
    skipped = [(e["iteration"], e["stage"]) for e in rerun if e["event"] == "skipped"]
    assert ran == [(2, "train"), (2, "eval")]
    assert sorted(skipped) == sorted([(1, s) for s in STAGES] + [(2, "sample"), (2, "label")])
    assert all(marker(run, k, s).stat().st_mtime_ns == t for (k, s), t in before.items())

    # every iteration's artefacts: responses, labels (readable like any label run), checkpoint, evaluation
    for k in (1, 2):
        d = iter_dir(run, k)
        store = RunStore(d)
        resp = store.read_table("responses").to_pylist()
        assert len(resp) == 4 * 2
        labels = store.read_table("labels").to_pylist()
        assert len(labels) == 4  # one pair per prompt with n = 2
        assert all(r["prob_source"] == "reward_model:position_free" and r["p_ab"] == r["p_ba"] and r["consistent"] for r in labels)
        assert (d / "policy" / "config.json").is_file() and (d / "eval.parquet").is_file()
        ev = json.loads(marker(run, k, "eval").read_text())
        (v,) = ev["evaluators"]
        assert 0 <= v["win_rate_ci"][0] <= v["win_rate"] <= v["win_rate_ci"][1] <= 1 and v["n"] == ev["n"] == 4 * 2
        assert math.isfinite(ev["kl_to_initial"]) and ev["mean_tokens_new"] > 0
    assert (iter_dir(run, 2) / "policy").resolve() != (iter_dir(run, 1) / "policy").resolve()
    assert json.loads(marker(run, 2, "sample").read_text())["policy"] == str(iter_dir(run, 1) / "policy")  # iteration 2 starts from iteration 1's policy
    report = json.loads((run / "report.json").read_text())
    (name,) = report
    assert [it["iteration"] for it in report[name]["iterations"]] == [1, 2]
    html = (run / "report.html").read_text()
    assert html.count("<svg") == 4 and "length-controlled" in html
    T = json.loads((run / "labeler_temperature.json").read_text())
    assert T["n_gold"] == 12 and T["temperature"] > 0
    assert labels[0]["p_a"] == pytest.approx(1 / (1 + math.exp(-(json.loads(labels[0]["raw"])["r_a"] - json.loads(labels[0]["raw"])["r_b"]) / T["temperature"])), rel=1e-9)


def test_win_stats_by_hand():
    from trainers.loop.stats import logistic_fit, win_stats

    base = [{"prompt_id": f"p{i}", "sample_index": 0, "reward": 0.0, "tokens": 10} for i in range(6)]
    new = [{"prompt_id": f"p{i}", "sample_index": 0, "reward": r, "tokens": 10} for i, r in enumerate([1, 1, 1, -1, 0, 1])]
    s = win_stats(new, base, 200, 0)
    assert s["win_rate"] == pytest.approx((4 + 0.5) / 6)
    assert s["lc_win_rate"] == pytest.approx(4.5 / 6, abs=1e-3)  # equal lengths: the length term has nothing to explain
    assert 0 <= s["win_rate_ci"][0] <= s["win_rate"] <= s["win_rate_ci"][1] <= 1
    # equal lengths: each replicate's length-controlled rate is its raw rate (up to the fit's L2 penalty), so the CIs agree
    assert s["lc_win_rate_ci"] == pytest.approx(s["win_rate_ci"], abs=2e-3)
    # wins follow length: 30 of 40 pairs are longer (win 80% of those), 10 shorter (win 20%): raw win rate 65%,
    # but at equal length the fitted rate is ~1/2 (by symmetry of the two groups around dlen = 0)
    base = [{"prompt_id": f"p{i}", "sample_index": 0, "reward": 0.0, "tokens": 20} for i in range(40)]
    new = []
    for i in range(40):
        longer = i < 30
        won = (i % 5 != 0) if longer else (i % 5 == 0)
        new.append({"prompt_id": f"p{i}", "sample_index": 0, "reward": 1.0 if won else -1.0, "tokens": 30 if longer else 10})
    s = win_stats(new, base, 200, 0)
    assert s["win_rate"] == pytest.approx((24 + 2) / 40) and s["lc_win_rate"] == pytest.approx(0.5, abs=0.02)
    assert s["mean_tokens_new"] == pytest.approx(25.0) and s["mean_tokens_initial"] == 20
    lo, hi = s["win_rate_ci"]  # one sample per prompt: about the normal interval's width, 2 x 1.96 sd / sqrt(40)
    assert lo < s["win_rate"] < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.65 * 0.35 / 40), rel=0.2)
    lo, hi = s["lc_win_rate_ci"]  # wide (10 shorter pairs, 2 wins: some replicates have none) but not [0, 1]
    assert 0 < lo < s["lc_win_rate"] < hi < 1 and hi - lo < 0.8
    t0, t1 = logistic_fit([0, 0, 1, 1], [0, 1, 1, 1])
    assert 1 / (1 + math.exp(-t0)) == pytest.approx(0.5, abs=1e-2) and t1 > 0


def test_bad_inputs_are_clear_messages(tiny_world, tmp_path):
    from pydantic import ValidationError

    from aifeedback.errors import InputError
    from trainers.loop.config import INDEPENDENCE_WARNING, LoopConfig, check_inputs

    with pytest.raises(ValidationError, match="iterations must be at least 1"):
        LoopConfig(iterations=0)
    notrm = tmp_path / "notrm"
    notrm.mkdir()
    (notrm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(InputError, match="is not a reward model.*LlamaForCausalLM.*train-rm"):
        check_inputs(LoopConfig(prompts=str(tiny_world["prompts"]), labeler=f"rm:{notrm}", evaluator=str(tiny_world["evaluator"])))
    with pytest.raises(InputError, match="is not a reward model: it has no config.json"):
        check_inputs(LoopConfig(prompts=str(tiny_world["prompts"]), evaluator=str(tmp_path)))
    with pytest.warns(UserWarning, match="not independent"):
        notes = check_inputs(LoopConfig(prompts=str(tiny_world["prompts"]), labeler=f"rm:{tiny_world['labeler']}", evaluator=str(tiny_world["labeler"])))
    assert notes == [INDEPENDENCE_WARNING.format(name=tiny_world["labeler"].name)]
    p = _cli(["loop", "--run-dir", str(tmp_path / "r"), "--set", "iterations=0", "--set", f"prompts={tiny_world['prompts']}"])
    out = p.communicate()[0]
    assert p.returncode == 2 and "iterations must be at least 1" in out, out[-2000:]


def test_config_nests_the_trainers_configs_with_the_loops_defaults(tmp_path):
    """dpo / grpo are the trainers' own configs: the loop's defaults fill keys not given, old flat keys say where they went,
    the keys the loop sets are refused, and a run dir written with the flat keys still resumes."""
    from aifeedback.config import build_config
    from aifeedback.errors import ConfigError
    from trainers.loop.config import LoopConfig
    from trainers.loop.rundir import check_run_config
    from trainers.rl_config import DPOTrainConfig, RLConfig

    cfg = LoopConfig(labeler="rm:/rm")
    # the settings a default loop trained with before the nesting
    assert cfg.dpo_for("p", 3) == DPOTrainConfig(policy="p", seed=3, beta=0.1, lr=2e-5, epochs=2.0, batch_size=4, max_length=256, soft_labels="none", min_confidence=0.0)
    assert cfg.grpo_for("p", 3) == RLConfig(policy="p", seed=3, reward="rm", reward_model="/rm", kl_beta=0.1, num_generations=4, max_completion_length=64, batch_size=4, max_steps=8, lr=2e-5)
    cfg = build_config(LoopConfig, None, {"dpo": {"beta": 0.2}, "grpo": {"max_steps": 2}})
    assert (cfg.dpo.beta, cfg.dpo.lr, cfg.dpo.epochs, cfg.grpo.max_steps, cfg.grpo.lr) == (0.2, 2e-5, 2.0, 2, 2e-5)
    assert LoopConfig.model_validate(cfg.model_dump(mode="json")) == cfg and "policy" not in cfg.model_dump()["dpo"]
    with pytest.raises(ConfigError, match=r"beta moved to dpo.beta \(method grpo: grpo.kl_beta\).*grpo_steps moved to grpo.max_steps"):
        build_config(LoopConfig, None, {"beta": 0.2, "grpo_steps": 3})
    with pytest.raises(ConfigError, match="grpo.num_generations is set by the loop, from n_responses"):
        build_config(LoopConfig, None, {"grpo": {"num_generations": 3}})
    # a run dir whose loop_config.json has the flat keys resumes with the same settings, and refuses others by dotted key
    flat = {k: v for k, v in LoopConfig().model_dump(mode="json").items() if k not in ("dpo", "grpo")}
    flat.update(beta=0.1, lr=2e-5, epochs=2.0, batch_size=4, max_length=256, soft_labels="none", min_confidence=0.0, grpo_steps=8)
    (tmp_path / "loop_config.json").write_text(json.dumps(flat))
    with pytest.raises(ConfigError, match=r"other settings \(dpo.lr\)"):
        check_run_config(tmp_path, build_config(LoopConfig, None, {"dpo": {"lr": 1e-3}}))
    check_run_config(tmp_path, LoopConfig(iterations=5))
    assert json.loads((tmp_path / "loop_config.json").read_text())["dpo"]["epochs"] == 2.0


def test_a_run_dir_from_before_dtype_device_and_gen_batch_none_resumes(tmp_path):
    """Runs written when the judge's dtype defaulted to float32 and gen_batch_size to 32 resume with today's defaults
    on CPU ("device" resolves to float32; the batch does not change outputs); another dtype is still refused."""
    from aifeedback.errors import ConfigError
    from trainers.loop.config import LoopConfig
    from trainers.loop.rundir import check_run_config

    old = LoopConfig().model_dump(mode="json")
    old["gen_batch_size"] = 32
    old["label"]["backend"]["dtype"] = "float32"
    (tmp_path / "loop_config.json").write_text(json.dumps(old))
    check_run_config(tmp_path, LoopConfig())
    old["label"]["backend"]["dtype"] = "bfloat16"
    (tmp_path / "loop_config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"other settings \(label.backend.dtype\)"):
        check_run_config(tmp_path, LoopConfig())


def test_best_worst_keeps_the_pair_between_top_and_bottom_response():
    from trainers.loop.stages import best_worst

    def row(pid, a, b, p):
        return {"prompt_id": pid, "response_a": a, "response_b": b, "p_a": p}

    # prompt x: rewards z > y > w (consistent probabilities); prompt q: two responses; one excluded row
    rows = [row("x", "w", "y", 0.3), row("x", "w", "z", 0.1), row("x", "y", "z", 0.4), row("q", "a", "b", 0.5), row("q", "a", "c", None)]
    picked = best_worst(rows)
    assert [(r["prompt_id"], r["response_a"], r["response_b"]) for r in picked] == [("x", "w", "z"), ("q", "a", "b")]
    # the pair keeps its own orientation and label: the trainer reads the winner from it
    assert picked[0]["p_a"] == 0.1


def test_seq_logprob_equals_per_sequence_log_softmax():
    """The batched, head-on-generated-positions-only KL term equals the plain per-sequence computation."""
    import random

    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.loop.sampling import seq_logprob

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)).eval()
    rng = random.Random(0)
    samples = [{"prompt_ids": [rng.randrange(100) for _ in range(rng.randrange(1, 12))], "gen_ids": [rng.randrange(100) for _ in range(rng.randrange(0, 9))]} for _ in range(21)]
    samples.append({"prompt_ids": [5, 6, 7], "gen_ids": []})

    def reference(x, t):
        ids = torch.tensor([x["prompt_ids"] + x["gen_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(m(input_ids=ids).logits.float() / t, -1)[0]
        a = len(x["prompt_ids"])
        return float(sum(lp[a - 1 + i, g] for i, g in enumerate(x["gen_ids"])))

    got = seq_logprob(m, samples, 0.7, batch_size=4)
    assert got[-1] == 0.0  # an empty response counts 0
    assert got == pytest.approx([reference(x, 0.7) for x in samples], abs=1e-4)
