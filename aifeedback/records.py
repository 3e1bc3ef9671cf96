"""Explicit Arrow schemas for every record the pipeline stores.

Every row carries its provenance (model, backend, seed, config hash, batch key);
rows that could not be produced become exclusion rows with a reason.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("source", pa.string()),
    ]
)

RESPONSES = pa.schema(
    [
        ("response_id", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("response", pa.string()),
        ("sample_index", pa.int32()),
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("prompt_truncated", pa.bool_()),
        ("config_hash", pa.string()),
        ("item_key", pa.string()),
        ("batch_key", pa.string()),
        ("batch_id", pa.string()),  # batch mode: the Batch API batch(es) that answered this item (aifeedback/batch_api.py)
    ]
)

ROUND = pa.struct(
    [
        ("round", pa.int32()),
        ("principle_id", pa.string()),
        ("critique", pa.string()),
        ("revision", pa.string()),
        ("seed", pa.int64()),
    ]
)

REVISIONS = pa.schema(
    [
        ("revision_id", pa.string()),
        ("response_id", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("initial_response", pa.string()),
        ("final_revision", pa.string()),
        ("rounds", pa.list_(ROUND)),
        ("revised", pa.bool_()),
        ("degenerate", pa.bool_()),
        ("degenerate_reason", pa.string()),
        ("constitution_id", pa.string()),
        ("constitution_version", pa.string()),
        ("few_shot", pa.bool_()),
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("prompt_truncated", pa.bool_()),
        ("config_hash", pa.string()),
        ("item_key", pa.string()),
        ("batch_key", pa.string()),
        ("batch_id", pa.string()),  # batch mode: the Batch API batch(es) that answered this item (aifeedback/batch_api.py)
    ]
)

OPTION_PROBS = pa.struct(
    [
        ("order", pa.string()),  # "AB" (A shown first), "BA", or "A"/"B" (pointwise: the response rated)
        ("principle_id", pa.string()),  # the constitution's choice principle, or null
        ("probs", pa.list_(pa.float64())),  # normalised over the template's candidates (after calibration, when on)
    ]
)

# What a label shard stores: the model's outputs and the provenance. No column here
# depends on a setting applied after the model ran (aifeedback/preference.py).
LABEL_OUTPUTS = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("response_a", pa.string()),
        ("response_b", pa.string()),
        ("mode", pa.string()),
        ("option_probs", pa.list_(OPTION_PROBS)),
        ("candidates", pa.list_(pa.string())),
        ("orders", pa.list_(pa.string())),
        ("principle_ids", pa.list_(pa.string())),
        ("rationale", pa.string()),
        ("prob_source", pa.string()),
        ("retries", pa.int32()),  # backend retries spent on this pair (429, 5xx, resets, timeouts, malformed replies)
        ("injection_flags", pa.list_(pa.string())),  # "A:verdict_claim"...: a response addresses the judge (labelers/injection.py)
        ("truncated", pa.bool_()),
        ("raw", pa.string()),
        ("labeler_model", pa.string()),
        ("backend", pa.string()),
        ("template", pa.string()),
        ("template_version", pa.string()),
        ("constitution_id", pa.string()),
        ("constitution_version", pa.string()),
        ("seed", pa.int64()),
        ("config_hash", pa.string()),
        ("item_key", pa.string()),
        ("batch_key", pa.string()),
        ("batch_id", pa.string()),  # batch mode: the Batch API batch(es) that answered this item (aifeedback/batch_api.py)
    ]
)

# What readers get (RunStore.read_table("labels")): the stored outputs plus the columns
# derived from them with the run's tie_margin / temperature / cot_clamp.
_DERIVED = [
    ("p_ab", pa.float64()),  # P(A better) when A was shown first
    ("p_ba", pa.float64()),  # P(A better) when B was shown first
    ("p_a", pa.float64()),  # soft label P(A > B), averaged over orders (and principles), temperature applied
    ("hard_label", pa.string()),  # "A", "B" or "tie" (aifeedback.preference.winner)
    ("confidence", pa.float64()),
    ("consistent", pa.bool_()),
    ("position_preferred", pa.string()),  # "first"/"second" when inconsistent, else null
    ("score_a", pa.float64()),
    ("score_b", pa.float64()),
]
LABELS = pa.schema(list(LABEL_OUTPUTS)[:6] + [pa.field(n, t) for n, t in _DERIVED] + list(LABEL_OUTPUTS)[6:])

EXCLUSIONS = pa.schema(
    [
        ("item_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),  # short machine-readable reason
        ("detail", pa.string()),  # human-readable text, e.g. the backend error after retries
        ("raw", pa.string()),  # the offending input or model output, kept verbatim
        ("item_key", pa.string()),  # the input item's content key (aifeedback/stage.py): reused, never recomputed
        ("batch_key", pa.string()),
        ("batch_id", pa.string()),  # batch mode: the batch whose failed or expired request excluded the item
    ]
)


# Columns added after shards were first written: a shard without one reads it as nulls.
LATER_COLUMNS = {"batch_id": pa.string()}


def with_later_columns(table: pa.Table) -> pa.Table:
    for name, typ in LATER_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    return table


def _content_json():
    """``json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)``, the text content hashes are
    taken of, as one encoder built once: the same string, without building an encoder per call (twice a
    pair in the label stage). The C encoder without its circular-reference check when this Python has it
    (content is parsed data, never circular), else the standard encoder object."""
    enc = json.JSONEncoder(ensure_ascii=False, default=str, sort_keys=True)
    try:
        from json.encoder import c_make_encoder, encode_basestring

        c = c_make_encoder(None, str, encode_basestring, None, ": ", ", ", True, False, True)
        probe = ({"b": [1, 2.5, None, True, "\u00e9\n\"", float("nan")], "a": ("x", {"z": -1e300, "y": object.__name__})}, "s")
        if "".join(c(probe, 0)) == enc.encode(probe):
            return lambda obj: "".join(c(obj, 0))
    except (ImportError, TypeError, ValueError):  # another Python's private encoder: the standard one
        return enc.encode
    return enc.encode


content_json = _content_json()


def stable_id(*parts: object, n: int = 16) -> str:
    """Content hash used for prompt, response and pair ids."""
    blob = content_json(parts)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def exclusion(item_id: str, stage: str, reason: str, detail: str = "", raw: str | None = None, batch_key: str = "") -> dict:
    return {"item_id": str(item_id), "stage": stage, "reason": reason, "detail": detail, "raw": raw, "batch_key": batch_key}


def pair_problem(pair: dict) -> tuple[str, str, str | None] | None:
    """Why a pair cannot be labelled, as (reason, detail, raw value), or None: the one definition
    every labeler applies (LLM judge, reward model, imported verdicts)."""
    a, b = pair.get("response_a"), pair.get("response_b")
    for name, v in (("response_a", a), ("response_b", b)):
        if v is None:
            return "missing_response", f"{name} is null or absent in this row; every pair needs both responses", None
        if not isinstance(v, str):
            return "wrong_type", f"{name} must be text, got {type(v).__name__}", str(v)[:500]
        if not v.strip():
            return "empty_response", f"{name} is empty; there is nothing to compare", None
    if a.strip() == b.strip():
        return "identical_responses", "response_a and response_b are identical; a preference between them is meaningless", a[:500]
    return None


def split_labelable(items: list[dict], stage: str, batch_key: str = "") -> tuple[list[dict], list[dict]]:
    """The pairs that can be labelled, and an exclusion row (reason from :func:`pair_problem`) for each other pair."""
    good, excluded = [], []
    for it in items:
        problem = pair_problem(it)
        if problem is None:
            good.append(it)
        else:
            excluded.append(exclusion(it["pair_id"], stage, *problem, batch_key=batch_key))
    return good, excluded
