"""Other views of label rows: listwise Bradley-Terry rankings and a binary (KTO-style) view."""

from __future__ import annotations

from aifeedback.preference import Consistency, select, trl_pair

from .scores import bradley_terry, normalised_reward


def rankings(label_rows: list[dict]) -> list[dict]:
    """Per prompt with more than two responses: Bradley-Terry strengths from every labelled pair."""
    by_prompt: dict[str, list[dict]] = {}
    for r in label_rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    out = []
    for pid, rows in by_prompt.items():
        texts: list[str] = []
        for r in rows:
            for t in (r["response_a"], r["response_b"]):
                if t not in texts:
                    texts.append(t)
        if len(texts) < 3:
            continue
        wins = [(texts.index(r["response_a"]), texts.index(r["response_b"]), r["p_a"]) for r in rows]
        strengths = bradley_terry(len(texts), wins)
        order = sorted(range(len(texts)), key=lambda i: -strengths[i])
        for rank, i in enumerate(order, 1):
            out.append({"prompt_id": pid, "response": texts[i], "bt_strength": strengths[i], "rank": rank, "n_responses": len(texts), "n_pairs": len(rows)})
    return out


def _rated(r: dict) -> bool:
    return r.get("score_a") is not None and r.get("score_b") is not None


def binary_view(label_rows: list[dict], threshold: float = 0.0, min_confidence: float = 0.0, consistency: Consistency = "any") -> list[dict]:
    """KTO-style rows (prompt, completion, label: bool).

    Pointwise rows: each response is good when its normalised reward (in [-1, 1]) is at least ``threshold``.
    Pairwise rows: the preferred response is good and the other bad, for the decided pairs that
    aifeedback.preference.select keeps with ``min_confidence`` and ``consistency``.
    """
    decided = [r for r in label_rows if not _rated(r) and trl_pair(r) is not None]
    kept = {id(r) for r in select(decided, min_confidence, consistency)[0]}
    out = []
    for r in label_rows:
        base = {"prompt": r["messages"], "pair_id": r["pair_id"], "labeler_model": r["labeler_model"], "template_version": r["template_version"]}
        if _rated(r):
            for side in ("a", "b"):
                reward = normalised_reward(r[f"score_{side}"])
                out.append({**base, "completion": [{"role": "assistant", "content": r[f"response_{side}"]}], "label": reward >= threshold, "reward": reward})
        elif id(r) in kept:
            pair = trl_pair(r)
            out.append({**base, "completion": pair["chosen"], "label": True, "reward": None})
            out.append({**base, "completion": pair["rejected"], "label": False, "reward": None})
    return out
