"""`aifeedback train-rm / train-rl / train-dpo` for real: a run labelled by the embedded model, tiny models built
from a config and saved as folders (no hub), `--config FILE` and `--set`; user errors are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import flows.label  # noqa: F401  Prefect sets up its log handlers at import: here, on the real stderr, not on a CliRunner stream
import flows.train  # noqa: F401
from flows.cli.app import app, is_user_error, user_errors as _user_errors

PAIRS = [
    {"pair_id": f"p{i}", "prompt": f"Question {i}: what is {i}+{i}?", "response_a": f"It is {2 * i}.", "response_b": "Go away."}
    for i in range(6)
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def error_lines(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders of a tiny Llama policy (the embedded tokenizer) and a tiny BERT reward backbone (MiniLM's tokenizer)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from aifeedback.models import minilm_dir, resolve

    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    rtok = AutoTokenizer.from_pretrained(minilm_dir())
    BertForSequenceClassification(BertConfig(vocab_size=rtok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1, max_position_embeddings=128)).save_pretrained(root / "backbone")
    rtok.save_pretrained(root / "backbone")
    return {"policy": str(root / "policy"), "backbone": str(root / "backbone")}


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    """A run whose labels come from `aifeedback label` on the embedded model."""
    root = tmp_path_factory.mktemp("labelled")
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    res = invoke("label", "--run-dir", str(root / "run"), "--input", str(src), "--set", "tie_margin=0")  # the 135M labeler is nearly indifferent: no ties
    assert res.exit_code == 0, res.output
    return str(root / "run")


def test_train_rm_reads_config_file_and_sets(tmp_path, tiny, labelled_run):
    cfg = tmp_path / "rm.yaml"
    cfg.write_text("batch_size: 4\nmax_length: 32\nlr: 0.001\nepochs: 2\n")
    out = tmp_path / "rm"
    res = invoke("train-rm", "--run-dir", labelled_run, "--out", str(out), "--config", str(cfg), "--backbone", tiny["backbone"], "--set", "max_steps=2", "--set", "checkpoint_every=1", "--labels", "hard")
    assert res.exit_code == 0, res.output
    assert not (out / "checkpoint").exists() and "'resumed_from_step': None" in res.output  # written at step 1, removed once the model is saved
    saved = json.loads((out / "aifeedback_reward_config.json").read_text())
    assert (saved["batch_size"], saved["max_length"], saved["max_steps"], saved["labels"], saved["backbone"]) == (4, 32, 2, "hard", tiny["backbone"])
    assert (out / "config.json").is_file() and "steps" in res.output


def test_train_dpo_on_a_labelled_run(tmp_path, tiny, labelled_run):
    out = tmp_path / "dpo"
    res = invoke("train-dpo", "--out", str(out), "--run-dir", labelled_run, "--policy", tiny["policy"], "--set", "max_steps=2", "--set", "max_length=64", "--set", "lr=1e-3")
    assert res.exit_code == 0, res.output
    log = json.loads((out / "dpo_log.json").read_text())
    assert log["config"]["policy"] == tiny["policy"] and log["config"]["max_steps"] == 2 and log["n_pairs"] >= 1 and len(log["losses"]) >= 1


def test_train_rl_with_a_reward_model(tmp_path, tiny):
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"policy: {tiny['policy']}\nmax_steps: 1\nmax_completion_length: 8\nbatch_size: 2\n")
    out = tmp_path / "rl"
    res = invoke("train-rl", "--out", str(out), "--config", str(cfg), "--reward", "rm", "--reward-model", tiny["backbone"], "--limit", "2")
    assert res.exit_code == 0, res.output
    curve = json.loads((out / "reward_curve.json").read_text())
    assert curve["config"]["reward"] == "rm" and curve["config"]["reward_model"] == tiny["backbone"] and len(curve["reward_curve"]) == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["train-rm", "--run-dir", "nowhere", "--out", "x", "--set", "lrr=0.1"], ["invalid RewardConfig", "unknown key 'lrr'", "'lr'"]),
        (["train-rl", "--out", "x", "--set", "kl_beta=-1"], ["invalid RLConfig", "kl_beta", "greater than or equal to 0"]),
        (["train-rl", "--out", "x", "--reward", "rm"], ["reward rm needs `reward_model` (--reward-model)"]),
        (["train-dpo", "--out", "x", "--set", "beta=two"], ["invalid DPOTrainConfig", "beta", "'two'"]),
        (["train-dpo", "--out", "x", "--config", "no-such.yaml"], ["config file no-such.yaml does not exist"]),
        (["generate", "--base-url", "http://127.0.0.1:8000/v1"], ["'backend.base_url' is a setting of the openai backend", "set `backend.kind` (--backend) to openai"]),
        (["loop", "--set", "beta=0.2"], ["invalid LoopConfig", "beta moved to dpo.beta (method grpo: grpo.kl_beta)", "--set dpo.beta=0.2"]),
        (["loop", "--set", "grpo.num_generations=3"], ["invalid LoopConfig", "grpo.num_generations is set by the loop, from n_responses"]),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2_before_anything_runs(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    lines = error_lines(res)
    assert len(lines) == 1 and len(res.output.strip().splitlines()) == 1, res.output
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in res.output and not list(tmp_path.iterdir())  # nothing ran


def test_a_valueerror_from_our_input_checks_is_one_line(tmp_path, labelled_run):
    """labelers/labeler.py refuses a method/template mismatch inside a batch: one line at the CLI naming the key and what to type, the traceback with --debug."""
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps(PAIRS[0]) + "\n")
    args = ["label", "--run-dir", str(tmp_path / "run"), "--input", str(src), "--method", "pointwise", "--set", "template=pairwise"]
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert error_lines(res) == ["error: method pointwise needs a pointwise template, got pairwise (pairwise); set `template` (--set template=VALUE) to pointwise or a pointwise template file"], res.output
    assert "Traceback" not in res.output
    debug = invoke("--debug", *args)
    assert debug.exit_code != 0 and isinstance(debug.exception, ValueError) and "pointwise template" in str(debug.exception)


def test_a_valueerror_from_a_library_keeps_its_traceback():
    from aifeedback.constitution import _placeholders

    with pytest.raises(json.JSONDecodeError):  # raised inside the json module: a bug, not the user's input
        with _user_errors():
            json.loads("{not json")
    with pytest.raises(ValueError) as ours:
        _placeholders("a {broken")
    assert is_user_error(ours.value)  # raised by our own check of the input
    with pytest.raises(ValueError) as theirs:
        int("x")
    assert not is_user_error(theirs.value)  # raised here, in tests/: not in the packages
