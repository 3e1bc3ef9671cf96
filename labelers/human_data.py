"""Readers for human preference data: hh-rlhf transcripts, PandaLM annotators, LLMBar, generic columns.

Each returns pairs in the labeler's shape plus a human label per pair ("A", "B"
or "tie"), with rows that cannot be used reported, not dropped.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

from aifeedback.errors import InputError
from aifeedback.records import stable_id

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _read_json_list(path: str | Path, fmt: str) -> list:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a UTF-8 JSON file ({exc}); pass the {fmt} file, or use --human-format generic for JSONL/CSV") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path} must hold a JSON list of objects, as {fmt} files do; got {type(data).__name__}")
    return data


def parse_transcript(text: str) -> list[dict]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> chat messages."""
    parts = _TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    msgs = []
    for i in range(1, len(parts) - 1, 2):
        role = "user" if parts[i] == "Human" else "assistant"
        msgs.append({"role": role, "content": parts[i + 1].strip()})
    return msgs


def split_hh(chosen: str, rejected: str) -> tuple[list[dict], str, str] | None:
    """Split an hh-rlhf pair into (context messages, chosen reply, rejected reply)."""
    c, r = parse_transcript(chosen), parse_transcript(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or c[:-1] != r[:-1] or not c[:-1]:
        return None
    return c[:-1], c[-1]["content"], r[-1]["content"]


def hh_pairs(path: str | Path, n: int | None = None, seed: int = 0) -> tuple[list[dict], list[str]]:
    """First n hh-rlhf pairs with A/B randomised by a seeded coin. Returns (pairs with 'human' label, problems)."""
    rng = random.Random(seed)
    pairs, problems = [], []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if n is not None and len(pairs) + len(problems) >= n:
                break
            try:
                row = json.loads(line)
                split = split_hh(row["chosen"], row["rejected"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{path} line {i + 1} is not an hh-rlhf record ({type(exc).__name__}: {exc}); hh-rlhf files are JSONL with chosen and rejected transcripts") from None
            if split is None:
                problems.append(f"line {i + 1}: chosen and rejected do not share a context")
                continue
            ctx, ch, rj = split
            a_is_chosen = rng.random() < 0.5
            pairs.append(
                {
                    "pair_id": f"hh-{i}",
                    "prompt_id": stable_id(ctx),
                    "messages": ctx,
                    "response_a": ch if a_is_chosen else rj,
                    "response_b": rj if a_is_chosen else ch,
                    "human": "A" if a_is_chosen else "B",
                    "source": "hh-rlhf/harmless-base",
                }
            )
    return pairs, problems


def pandalm_items(path: str | Path) -> list[dict]:
    """PandaLM test set: annotator1..3 in {0 tie, 1, 2}; the human label is the majority (ties when no majority)."""
    data = _read_json_list(path, "PandaLM testset-v1.json")
    out = []
    for i, row in enumerate(data):
        for k in ("instruction", "response1", "response2", "annotator1", "annotator2", "annotator3"):
            if k not in row:
                raise InputError(f"{path} item {i} has no {k!r}; is this the PandaLM testset-v1.json file?")
        votes = [row[f"annotator{j}"] for j in (1, 2, 3)]
        if not all(str(v).strip() in ("0", "1", "2") for v in votes):
            raise InputError(f"{path} item {i}: annotator labels must be 0 (tie), 1 or 2, got {votes}; is this the PandaLM testset-v1.json file?")
        votes = [int(v) for v in votes]
        counts = {v: votes.count(v) for v in set(votes)}
        top, c = max(counts.items(), key=lambda kv: kv[1])
        majority = {1: "A", 2: "B", 0: "tie"}[top] if c >= 2 else "tie"
        prompt = row["instruction"] + (("\n\n" + row["input"]) if row.get("input") else "")
        out.append(
            {
                "pair_id": f"pandalm-{row.get('idx', i)}",
                "prompt_id": stable_id(prompt),
                "messages": [{"role": "user", "content": prompt}],
                "response_a": row["response1"],
                "response_b": row["response2"],
                "human": majority,
                "annotators": ["tie" if v == 0 else ("A" if v == 1 else "B") for v in votes],
                "source": "pandalm",
                "category": row.get("motivation_app") or "pandalm",
            }
        )
    return out


def llmbar_items(path: str | Path) -> list[dict]:
    """LLMBar: input, output_1, output_2, label (1 or 2)."""
    data = _read_json_list(path, "LLMBar")
    out = []
    for i, row in enumerate(data):
        for k in ("input", "output_1", "output_2", "label"):
            if k not in row:
                raise InputError(f"{path} item {i} has no {k!r}; LLMBar files have input, output_1, output_2, label")
        if str(row["label"]).strip() not in ("1", "2"):
            raise InputError(f"{path} item {i}: label must be 1 or 2 (the better output), got {row['label']!r}; is this an LLMBar file?")
        out.append(
            {
                "pair_id": f"llmbar-{i}",
                "prompt_id": stable_id(row["input"]),
                "messages": [{"role": "user", "content": row["input"]}],
                "response_a": row["output_1"],
                "response_b": row["output_2"],
                "human": {1: "A", 2: "B"}.get(int(row["label"]), "tie"),
                "source": "llmbar-natural",
                "category": "llmbar",
            }
        )
    return out


def generic_items(path: str | Path, id_column: str, label_column: str) -> list[dict]:
    """Any table with an id column and a label column (A/B/tie, 1/2/0, or chosen side)."""
    from aifeedback.io import iter_rows

    out = []
    for n, row in enumerate(iter_rows(path), 1):
        if isinstance(row, tuple):
            raise InputError(f"{path}: {row[1]}")
        if n == 1:
            missing = [c for c in (id_column, label_column) if c not in row]
            if missing:
                raise InputError(f"no column(s) {missing} in {path}. Available columns: {sorted(row)}. Pass --human-id-column / --human-label-column.")
        if row.get(id_column) is None:
            raise InputError(f"{path} row {n} has no {id_column!r}; every row needs a pair id to join on (pass --human-id-column)")
        out.append({"pair_id": str(row[id_column]), "human": normalise_verdict(row.get(label_column)), "source": Path(path).name, "category": str(row.get("category") or Path(path).name)})
    return out


def normalise_verdict(v) -> str | None:
    """'A'/'B'/'tie', 1/2/0 (PandaLM, LLMBar), 'response_a'/'response_b' -> 'A'/'B'/'tie'; None when unknown."""
    s = str(v).strip().lower()
    return {"a": "A", "1": "A", "response_a": "A", "b": "B", "2": "B", "response_b": "B", "tie": "tie", "0": "tie"}.get(s)


def load_human(fmt: str, path: str | Path, n: int | None = None, seed: int = 0, id_column: str = "pair_id", label_column: str = "label") -> list[dict]:
    if not Path(path).is_file():
        raise InputError(f"human label file {path} does not exist; pass --human with the path of a {fmt} file")
    if fmt == "hh":
        try:
            return hh_pairs(path, n, seed)[0]
        except (UnicodeDecodeError, OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError
            raise InputError(f"{path} could not be read as hh-rlhf JSONL ({exc}); pass a UTF-8 .jsonl or .jsonl.gz file") from None
    if fmt == "pandalm":
        return pandalm_items(path)[:n]
    if fmt == "llmbar":
        return llmbar_items(path)[:n]
    if fmt == "generic":
        return generic_items(path, id_column, label_column)[:n]
    raise InputError(f"unknown human-label format {fmt!r}; use hh, pandalm, llmbar or generic")
