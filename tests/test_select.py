"""The one preference filter (aifeedback.preference.select): known answers, and every site that filters pairs agrees with it."""

import pytest
from pydantic import ValidationError

from aifeedback.errors import ConfigError
from aifeedback.export import ExportOptions, option_help, preference_rows
from aifeedback.preference import select
from labelers.views import binary_view
from trainers.reward_config import RewardConfig
from trainers.reward_trainer import select_pairs
from trainers.rl import dpo_dataset
from trainers.rl_config import DPOTrainConfig

# (id, confidence, consistent, hard label): every confidence (missing, low, high) with every consistency (agreed, disagreed, unchecked)
GRID = [
    ("a", None, True, "A"),
    ("b", None, False, "B"),
    ("c", None, None, "A"),
    ("d", 0.2, True, "A"),
    ("e", 0.2, False, "B"),
    ("f", 0.2, None, "A"),
    ("g", 0.9, True, "B"),
    ("h", 0.9, False, "A"),
    ("i", 0.9, None, "B"),
    ("t", 0.0, True, "tie"),  # a tie: select keeps it (ties are the caller's call); the TRL sites and hard labels drop it
]

# (min_confidence, consistency) -> (kept ids, dropped by reason)
EXPECTED = {
    (0.0, "any"): ("abcdefghit", {"inconsistent": 0, "consistency_unknown": 0, "below_min_confidence": 0}),
    (0.0, "drop_inconsistent"): ("acdfgit", {"inconsistent": 3, "consistency_unknown": 0, "below_min_confidence": 0}),
    (0.0, "consistent_only"): ("adgt", {"inconsistent": 3, "consistency_unknown": 3, "below_min_confidence": 0}),
    (0.2, "any"): ("defghi", {"inconsistent": 0, "consistency_unknown": 0, "below_min_confidence": 4}),  # 0.2 passes 0.2; None and the tie's 0 do not
    (0.5, "any"): ("ghi", {"inconsistent": 0, "consistency_unknown": 0, "below_min_confidence": 7}),
    (0.5, "drop_inconsistent"): ("gi", {"inconsistent": 3, "consistency_unknown": 0, "below_min_confidence": 5}),
    (0.5, "consistent_only"): ("g", {"inconsistent": 3, "consistency_unknown": 3, "below_min_confidence": 3}),
    (1.0, "any"): ("", {"inconsistent": 0, "consistency_unknown": 0, "below_min_confidence": 10}),
}


def _row(pid: str, conf: float | None, consistent: bool | None, hard: str) -> dict:
    p_a = {"A": 0.5 + (conf or 0.4) / 2, "B": 0.5 - (conf or 0.4) / 2, "tie": 0.5}[hard]
    return {
        "pair_id": pid,
        "prompt_id": f"q-{pid}",
        "messages": [{"role": "user", "content": f"question {pid}"}],
        "response_a": f"answer A to {pid}",
        "response_b": f"answer B to {pid}",
        "p_a": p_a,
        "hard_label": hard,
        "confidence": conf,
        "consistent": consistent,
        "score_a": None,
        "score_b": None,
        "orders": ["AB", "BA"] if consistent is not None else ["AB"],
        "principle_ids": [],
        "injection_flags": [],
        "labeler_model": "m",
        "backend": "transformers",
        "mode": "pairwise",
        "template": "t",
        "template_version": "t@1",
        "constitution_id": None,
        "constitution_version": None,
        "seed": 0,
        "config_hash": "h",
    }


def _grid() -> list[dict]:
    return [_row(*g) for g in GRID]


@pytest.mark.parametrize(("min_confidence", "consistency"), list(EXPECTED))
def test_select_known_answers(min_confidence, consistency):
    want_ids, want_dropped = EXPECTED[(min_confidence, consistency)]
    rows = _grid()
    kept, dropped = select(rows, min_confidence, consistency)
    assert "".join(r["pair_id"] for r in kept) == want_ids  # in input order, the rows themselves
    assert dropped == want_dropped and len(kept) + sum(dropped.values()) == len(rows)
    assert all(any(k is r for r in rows) for k in kept)


def test_select_refuses_what_it_cannot_apply():
    with pytest.raises(ConfigError, match=r"min_confidence must be in \[0, 1\].*got 1.5"):
        select(_grid(), 1.5)
    with pytest.raises(ConfigError, match="consistency must be one of any, drop_inconsistent, consistent_only, got 'true'"):
        select(_grid(), 0.0, "true")


def _kept_by_every_site(rows: list[dict], min_confidence: float, consistency: str) -> dict[str, set[str]]:
    export, _ = preference_rows(rows, ExportOptions(min_confidence=min_confidence, consistency=consistency))
    reward, _ = select_pairs(rows, RewardConfig(labels="hard", min_confidence=min_confidence, consistency=consistency))
    dpo, _ = dpo_dataset(rows, DPOTrainConfig(min_confidence=min_confidence, consistency=consistency))
    by_prompt = {r["messages"][0]["content"]: r["pair_id"] for r in rows}
    view = binary_view(rows, min_confidence=min_confidence, consistency=consistency)
    return {
        "export": {r["pair_id"] for r in export},
        "reward model (hard labels)": {r["pair_id"] for r in reward},
        "dpo": {by_prompt[r["prompt"][0]["content"]] for r in dpo},
        "binary view": {r["pair_id"] for r in view},
    }


@pytest.mark.parametrize(("min_confidence", "consistency"), list(EXPECTED))
def test_export_reward_model_dpo_and_views_keep_the_same_pairs(min_confidence, consistency):
    want = set(EXPECTED[(min_confidence, consistency)][0]) - {"t"}  # every one of these sites leaves the tie out
    sites = _kept_by_every_site(_grid(), min_confidence, consistency)
    assert sites == dict.fromkeys(sites, want)


def test_soft_reward_labels_keep_ties_that_select_keeps():
    kept, dropped = select_pairs(_grid(), RewardConfig(labels="soft"))
    assert [r["pair_id"] for r in kept] == list("abcdefghit") and "tie" not in dropped


def test_one_field_for_each_option():
    """export options, the reward-model config and the DPO config declare min_confidence and consistency once, with one help text."""
    for name in ("min_confidence", "consistency"):
        fields = [cls.model_fields[name] for cls in (ExportOptions, RewardConfig, DPOTrainConfig)]
        assert len({f.description for f in fields}) == 1 and option_help(name) == fields[0].description
        assert len({repr(f.metadata) for f in fields}) == 1 and len({f.default for f in fields}) == 1
    assert "no recorded confidence is dropped" in option_help("min_confidence") and "only consistent_only drops it" in option_help("consistency")
    for cls in (ExportOptions, RewardConfig, DPOTrainConfig):
        with pytest.raises(ValidationError, match="less than or equal to 1"):
            cls(min_confidence=1.5)
        with pytest.raises(ValidationError, match="'any', 'drop_inconsistent' or 'consistent_only'"):
            cls(consistency="yes")


def test_export_names_the_bad_option(tmp_path):
    from flows.export import export_run

    with pytest.raises(ConfigError, match="consistency: Input should be 'any', 'drop_inconsistent' or 'consistent_only'"):
        export_run(str(tmp_path), consistency="consistent-only")
