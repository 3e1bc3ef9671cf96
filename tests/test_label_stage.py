"""One label-job contract: every label job gives a Derivation and manifest entries, built one way for the command, the loop and estimate."""

from __future__ import annotations

from aifeedback.batches import label_manifest
from aifeedback.config import LabelConfig
from aifeedback.preference import Derivation
from aifeedback.store import RunStore
from labelers.import_labels import ImportJob
from labelers.stage import build_label_stage, label_job


def test_every_label_job_gives_a_derivation_and_one_manifest_shape():
    llm = label_job(LabelConfig(constitution="harmless", cot=True, cot_clamp=(0.4, 0.6), tie_margin=0.1, temperature=2.0))
    imp = ImportJob("gpt-x", "verdicts.json", "abc123", "label", tie_margin=0.2)
    assert llm.derivation() == Derivation(0.1, 2.0, (0.4, 0.6)) and imp.derivation() == Derivation(0.2, 1.0, None)
    m = label_manifest(llm)
    assert m["derive"] == {"tie_margin": 0.1, "temperature": 2.0, "cot": True, "cot_clamp": [0.4, 0.6]}
    assert m["labeler"] == "llm" and m["template"]["id"] == llm.template.id and m["constitution_id"] == "harmless" and m["constitution_version"]
    assert label_manifest(imp)["derive"] == {"tie_margin": 0.2, "temperature": 1.0, "cot": False, "cot_clamp": None}
    assert label_manifest(imp)["labeler"] == "imported" and label_manifest(imp)["judge"] == "gpt-x"
    # what readers rebuild from the manifest is the job's derivation (and older manifests still read)
    assert Derivation.from_manifest(m["derive"]) == llm.derivation()
    assert Derivation.from_manifest({"tie_margin": 0.05, "temperature": 1.0, "cot": False, "cot_clamp": [0.4, 0.6]}) == Derivation()


def test_the_loops_llm_labels_carry_the_template_and_constitution(tmp_path, monkeypatch):
    """The loop builds its label stage as the label command does, so its manifest has the judge's template and constitution."""
    import trainers.loop.stages as S
    from trainers.loop.config import LoopConfig

    monkeypatch.setattr(S, "pairs_from_responses", lambda store: [])  # no responses needed to build the stage
    cfg = LoopConfig(label={"constitution": "helpful-honest"})
    stage = S.label_stage(tmp_path, cfg, RunStore(tmp_path / "iter-1"))
    m = label_manifest(stage.job)
    assert m["template"]["id"] and m["constitution_id"] == "helpful-honest"
    assert stage.batch_size == cfg.label.batch_size


def test_build_label_stage_reads_the_config_pairs_file(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"pair_id": "a", "prompt": "Hi?", "response_a": "Hello.", "response_b": "Go away."}\n')
    stage = build_label_stage(RunStore(tmp_path / "run"), LabelConfig(input=str(src), batch_size=7))
    items = list(stage.items)
    assert [i["pair_id"] for i in items] == ["a"] and stage.batch_size == 7 and stage.job.stage == "labels"
