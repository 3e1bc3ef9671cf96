"""`aifeedback export` on real runs of the embedded model: Hub layout round trip, filters, TRL DPO, a push with no network."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aifeedback.constitution import load_constitution
from aifeedback.export import ExportOptions, assign_splits, build_tables, prompt_key
from aifeedback.store import RunStore

# (pair id, prompt, response A, response B, the better one as a person would say)
PAIRS = [
    ("p1", "What is 2+2?", "2+2 is 4.", "It is 22.", "A"),
    ("p2", "How do I pick my neighbour's lock?", "I can't help you get into someone else's home.", "Use a tension wrench and a pick.", "A"),
    ("p3", "Name a yellow fruit.", "A banana.", "Blue.", "A"),
    ("p4", "What is the capital of France?", "Berlin.", "Paris is the capital of France.", "B"),
    ("p5", "Say hi politely.", "Go away.", "Hello, nice to meet you!", "B"),
    ("p6", "How many legs does a spider have?", "Eight.", "Six, like all insects.", "A"),
    ("p7", "Give one tip for sleeping well.", "Keep a regular bedtime.", "Drink coffee at midnight.", "A"),
    ("p8", "What colour is the sky on a clear day?", "Green.", "Blue.", "B"),
]
GENERATION_PROMPTS = ["Name a yellow fruit.", "How do I pick my neighbour's lock?"]  # shared with p2, p3: one split for both configs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run with responses, revisions, pairwise labels (imported pairs, harmless constitution) and an agreement report; a pointwise run."""
    from flows.agreement import run_agreement
    from flows.generate import run_generate
    from flows.label import run_label
    from flows.revise import run_revise

    base = tmp_path_factory.mktemp("export")
    pairs = base / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"pair_id": i, "prompt": p, "response_a": a, "response_b": b, "human": h}) + "\n" for i, p, a, b, h in PAIRS))
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(GENERATION_PROMPTS)))
    main, pw = base / "main", base / "pointwise"
    run_generate(run_dir=str(main), overrides={"input": str(prompts), "id_column": "id", "sampling": {"n": 2, "max_new_tokens": 6}})
    run_revise(run_dir=str(main), overrides={"constitution": "harmless", "rounds": 1, "few_shot": False, "sampling": {"max_new_tokens": 6}})
    run_label(run_dir=str(main), overrides={"input": str(pairs), "constitution": "harmless", "tie_margin": 0.003})
    run_agreement(human=str(pairs), human_format="generic", runs=[f"smollm2={main}"], out_dir=str(main / "agreement"), human_label_column="human")
    run_label(run_dir=str(pw), overrides={"input": str(pairs), "method": "pointwise", "limit": 4, "tie_margin": 0.0})  # the 135M rater spreads little: decide every unequal pair
    return {"main": main, "pointwise": pw, "base": base}


@pytest.fixture(scope="module")
def mixed_run(runs, tmp_path_factory):
    """The main run, except that on every other labelled pair the labeler agreed with itself.

    The embedded 135M labeler prefers the first-shown response on every pair of PAIRS (in both
    orders), so its run holds no consistent pair and `consistency=consistent_only` would have nothing to keep.
    Here the stored option probabilities of the (B, A) order are mirrored on p1, p3, p5, p7
    (the real model outputs of the other slot), so the run has consistent and inconsistent
    pairs; every derived column (p_a, hard label, confidence, consistency) is then computed
    by the store as for any run.
    """
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = tmp_path_factory.mktemp("mixed") / "run"
    shutil.copytree(runs["main"], dest)
    flip = {"p1", "p3", "p5", "p7"}
    store = RunStore(dest)
    flipped = 0
    for key in store.keys("labels"):
        path = store.shard_path("labels", key)
        table = pq.read_table(path)
        rows = table.to_pylist()
        for r in rows:
            if r["pair_id"] in flip:
                for e in r["option_probs"]:
                    if e["order"] == "BA":
                        e["probs"] = e["probs"][::-1]
                        flipped += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    assert flipped == len(flip)
    return dest


def _rows(run: Path, stage: str) -> list[dict] | None:
    return RunStore(run).read_table(stage).to_pylist() if (run / stage / "_manifest.json").is_file() else None


def _card_meta(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


def test_every_config_round_trips_with_provenance(runs, tmp_path):
    import datasets

    from flows.export import export_run

    opts = {"test_size": 0.25, "seed": 3}
    for name, want in (("main", {"preferences", "sft", "revision_preferences"}), ("pointwise", {"preferences", "pointwise"})):
        run, out = runs[name], tmp_path / name
        summary = export_run(str(run), str(out), **opts)
        tables = build_tables(_rows(run, "labels"), _rows(run, "revisions"), ExportOptions(**opts))
        assert set(tables.tables) == set(summary["rows"]) == want
        meta = _card_meta(out)
        assert {c["config_name"] for c in meta["configs"]} == want and meta["license"] == "other"
        for config, splits in tables.tables.items():
            loaded = datasets.load_dataset(str(out), config, cache_dir=str(tmp_path / "hf-cache"))
            assert set(loaded) == set(splits)
            for split, table in splits.items():
                assert loaded[split].to_list() == table.to_pylist()
    # pointwise: one row per rated response, scores on the 1-10 scale
    pw = _rows(runs["pointwise"], "labels")
    points = [r for s in tables.tables["pointwise"].values() for r in s.to_pylist()]
    assert len(points) == len({(r["messages"][-1]["content"], x) for r in pw for x in (r["response_a"], r["response_b"])})
    assert all(1 <= p["score"] <= 10 and p["n_ratings"] >= 1 for p in points)
    assert any("sft, revision_preferences: the run has no revisions stage" in n for n in tables.notes)

    main = tmp_path / "main"
    prefs = [r for s in ("train", "test") for r in datasets.load_dataset(str(main), "preferences", cache_dir=str(tmp_path / "hf-cache")).get(s, [])]
    decided = [r for r in _rows(runs["main"], "labels") if r["hard_label"] != "tie"]
    assert len(prefs) == len(decided) > 0  # no filters: every decided pair is exported, and the loop below checks each
    labels_manifest = json.loads((runs["main"] / "labels" / "_manifest.json").read_text())
    for r in prefs:  # provenance on every row
        assert r["labeler_model"] == labels_manifest["model"] and r["template_version"] == labels_manifest["template_version"]
        assert r["constitution_id"] == "harmless" and r["constitution_version"] == labels_manifest["constitution_version"]
        assert len(r["principle_ids"]) == 1 and r["orders"] == ["AB", "BA"] and r["seed"] == 0
        assert r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
    # the split is drawn over all the run's prompts (filters do not move a prompt) and shared by every config
    run_prompts = {prompt_key(r["messages"]) for stage in ("labels", "revisions") for r in _rows(runs["main"], stage)}
    split_of = assign_splits(run_prompts, 0.25, 3)
    assert len(run_prompts) == len(PAIRS) and sorted(split_of.values()).count("test") == 2
    for config in ("preferences", "sft"):
        for split, ds in datasets.load_dataset(str(main), config, cache_dir=str(tmp_path / "hf-cache")).items():
            assert all(split_of[prompt_key(r["prompt"] if config == "preferences" else r["messages"][:-1])] == split for r in ds)
    # the card: constitution text and hash, template, commits, configs, agreement report picked up from RUN/agreement
    card = (main / "README.md").read_text()
    con, text = load_constitution("harmless")
    assert text.strip() in card and con.sha256 in card
    assert labels_manifest["template_version"] in card and labels_manifest["git_commit"] in card and "preamble: |" in card
    assert "configs/label.json" in card and "configs/revise.json" in card and "configs/generate.json" in card
    assert "## Agreement with human labels" in card and "| smollm2 |" in card
    prov = json.loads((main / "provenance.json").read_text())
    assert prov["agreement"][0]["judges"][0]["this_run"] and prov["agreement"][0]["path"] == "agreement/metrics.json"
    assert prov["constitutions"][0]["used_by"] == ["revisions", "labels"]


def test_filters_remove_what_they_should_and_counts_add_up(mixed_run, tmp_path):
    from flows.export import export_run

    labels = _rows(mixed_run, "labels")
    ties = {r["pair_id"] for r in labels if r["hard_label"] == "tie"}
    decided = [r for r in labels if r["pair_id"] not in ties]
    consistent = [r for r in decided if r["consistent"] is True]
    assert len(decided) >= 4 and 0 < len(consistent) < len(decided), "the fixture needs decided pairs, consistent and not"
    threshold = statistics.median(r["confidence"] for r in decided)
    assert any(r["confidence"] >= threshold for r in consistent), "consistent_only needs a consistent pair above the threshold"
    by_id = {r["pair_id"]: r for r in labels}
    for consistency in ("any", "drop_inconsistent", "consistent_only"):  # every pair here was scored in both orders: the last two agree
        consistent_only = consistency != "any"
        summary = export_run(str(mixed_run), str(tmp_path / consistency), min_confidence=threshold, consistency=consistency)
        c = summary["counts"]["preferences"]
        assert c["label_rows"] == len(labels) == c["exported"] + c["ties"] + c["inconsistent"] + c["consistency_unknown"] + c["below_min_confidence"] + c["suspected_injection"]
        assert c["consistency_unknown"] == 0
        assert c["ties"] == len(ties)
        kept = [r for r in decided if r["consistent"] is True or not consistent_only]
        assert c["inconsistent"] == len(decided) - len(kept)
        assert c["below_min_confidence"] == sum(1 for r in kept if r["confidence"] < threshold)
        if consistent_only:  # both sides of the filter are exercised: some pairs dropped, some kept
            assert c["inconsistent"] == len(decided) - len(consistent) > 0
            assert c["exported"] == sum(1 for r in consistent if r["confidence"] >= threshold) > 0
        else:
            assert c["inconsistent"] == 0 and c["below_min_confidence"] > 0  # the median of the decided pairs leaves some below it
            assert c["exported"] == sum(1 for r in decided if r["confidence"] >= threshold) > 0
        assert summary["counts"]["sft"]["revision_rows"] == summary["counts"]["sft"]["exported"] + summary["counts"]["sft"]["not_revised"] + summary["counts"]["sft"]["degenerate"]
        assert sum(summary["rows"]["preferences"].values()) == c["exported"]
        rows = build_tables(labels, None, ExportOptions(min_confidence=threshold, consistency=consistency)).tables["preferences"]
        exported = [r for t in rows.values() for r in t.to_pylist()]
        assert len(exported) == c["exported"] and not ties & {r["pair_id"] for r in exported}
        for r in exported:
            src = by_id[r["pair_id"]]
            assert r["confidence"] >= threshold and (r["consistent"] is True or not consistent_only)
            assert r["p_chosen"] >= 0.5 and r["chosen"][0]["content"] == (src["response_a"] if src["p_a"] >= 0.5 else src["response_b"])


def test_dpo_trainer_takes_the_preferences_config_as_is(runs, tmp_path):
    import datasets
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from aifeedback.models import resolve
    from flows.export import export_run

    export_run(str(runs["main"]), str(tmp_path / "out"), test_size=0.0)
    train = datasets.load_dataset(str(tmp_path / "out"), "preferences", cache_dir=str(tmp_path / "hf-cache"))["train"]
    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")  # TRL builds the reference model from the policy's folder
    model = LlamaForCausalLM.from_pretrained(tmp_path / "tiny")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, report_to=[], max_steps=1, per_device_train_batch_size=2, max_length=64, save_strategy="no", logging_steps=1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[0]["loss"] > 0


def test_push_without_network_is_one_clear_error_and_leaks_no_token(runs, tmp_path):
    import datasets

    out = tmp_path / "out"
    token = "hf_exportTestToken7f3a9c"
    env = {**os.environ, "HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "1000", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "flows.cli", "export", "--run-dir", str(runs["main"]), "--to-dir", str(out), "--repo-id", "someone/rlaif-test", "--private"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "could not push to someone/rlaif-test" in errors[0] and f"the local export at {out} is intact" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert datasets.load_dataset(str(out), "sft", cache_dir=str(tmp_path / "hf-cache"))["train"].num_rows > 0 and (out / "README.md").is_file()
    for path in [*out.rglob("*"), *runs["main"].rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert token not in proc.stdout + proc.stderr


def test_clear_errors_for_runs_with_nothing_to_export(tmp_path, runs):
    from flows.export import ExportError, export_run

    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"neither labels nor revisions.*aifeedback label --run-dir .*aifeedback revise --run-dir"):
        export_run(str(tmp_path / "empty"))
    with pytest.raises(ExportError, match="no run directory"):
        export_run(str(tmp_path / "missing"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier aifeedback export"):
        export_run(str(runs["main"]), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="ORG/NAME"):
        export_run(str(runs["main"]), str(tmp_path / "x"), repo_id="no-slash")
