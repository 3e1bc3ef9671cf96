"""The one definition of a preference: what a label row's model outputs mean, and its TRL form.

A label shard stores only what the model produced (``option_probs``: the
normalised option probabilities of every scoring prompt, by order and principle).
Everything that depends only on those, and on settings applied after the model
ran, is derived here when the labels are read:

- ``p_ab``, ``p_ba``: P(A better) with A shown first / second (mean over principles,
  each clamped to ``cot_clamp`` when chain-of-thought was used);
- ``p_a``: their mean, with its log-odds divided by ``temperature``;
- ``hard_label`` (:func:`winner`): "tie" when ``|p_a - 0.5| < tie_margin`` or
  ``p_a == 0.5`` exactly, else the side ``p_a`` favours;
- ``confidence`` ``|2 p_a - 1|``, ``consistent`` and ``position_preferred``;
- pointwise: ``score_a``, ``score_b`` (expected 1-10 ratings) and ``p_a`` = P(S_A > S_B).

So changing ``tie_margin``, ``temperature`` or ``cot_clamp`` costs no model call,
and export, DPO data, the reward-model set, agreement and the views all use
:func:`winner` and :func:`trl_pair`: they agree pair by pair. They also filter pairs
with one function, :func:`select` (``min_confidence`` and ``consistency``, each
declared once, as :data:`MinConfidence` and :data:`ConsistencyFilter`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import Field

from .errors import ConfigError, StoreError

DERIVED_COLUMNS = ("p_ab", "p_ba", "p_a", "hard_label", "confidence", "consistent", "position_preferred", "score_a", "score_b")


@dataclass(frozen=True, slots=True)
class Derivation:
    """Settings applied to stored model outputs when labels are read (never part of a cache key)."""

    tie_margin: float = 0.05
    temperature: float = 1.0
    cot_clamp: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, cfg) -> "Derivation":
        """From a LabelConfig (or its JSON dump): the clamp applies to chain-of-thought labels only."""
        get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
        clamp = get("cot_clamp") if get("cot") else None
        return cls(float(get("tie_margin")), float(get("temperature")), tuple(clamp) if clamp else None)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, d: dict) -> "Derivation":
        """From a manifest's ``derive`` entry (:meth:`as_manifest`, or a LabelConfig's keys in older manifests)."""
        clamp = d.get("cot_clamp") if d.get("cot", True) else None
        return cls(float(d["tie_margin"]), float(d["temperature"]), tuple(clamp) if clamp else None)

    def as_manifest(self) -> dict:
        """The manifest's ``derive`` entry (``cot`` says whether the clamp applies, as in a LabelConfig)."""
        return {"tie_margin": self.tie_margin, "temperature": self.temperature, "cot": self.cot_clamp is not None, "cot_clamp": list(self.cot_clamp) if self.cot_clamp else None}


# pure functions ---------------------------------------------------------------
def expected_score(probs: list[float], candidates: list[str]) -> float:
    """sum_i i * P(i) over numeric candidates ("1".."10")."""
    return sum(float(c) * p for c, p in zip(candidates, probs))


def p_greater(pa: list[float], pb: list[float]) -> float:
    """P(S_A > S_B) + 0.5 P(S_A = S_B) for independent score distributions over the same ordered scale."""
    total = cum_b = 0.0
    for i in range(len(pa)):
        total += pa[i] * (cum_b + 0.5 * pb[i])
        cum_b += pb[i]
    return total


def apply_temperature(p: float, temperature: float) -> float:
    """Scale the log-odds of a probability by 1/temperature."""
    if temperature == 1.0:
        return p
    p = min(max(p, 1e-9), 1 - 1e-9)
    z = math.log(p / (1 - p)) / temperature
    return 1 / (1 + math.exp(-z))


def winner(p_a: float | None, tie_margin: float) -> str:
    """The hard label: "A", "B" or "tie". The only place a winner or a tie is decided."""
    if p_a is None or p_a == 0.5 or abs(p_a - 0.5) < tie_margin:
        return "tie"
    return "A" if p_a > 0.5 else "B"


# kept under its old name: labelers.scores and the tests use it
hard_label = winner


def position_preferred(p_ab: float, p_ba: float) -> str | None:
    """When the two orders disagree, which position won both times (None when consistent).

    p_ab: P(A better) with A shown first; p_ba: P(A better) with A shown second.
    A purely position-biased labeler (p_ab = 1, p_ba = 0) gives "first".
    """
    a_first_wins = p_ab > 0.5
    a_second_wins = p_ba > 0.5
    if a_first_wins == a_second_wins:
        return None
    return "first" if a_first_wins else "second"


def confidence(p_a: float) -> float:
    return abs(p_a - 0.5) * 2


# rows -------------------------------------------------------------------------
def derive(row: dict, d: Derivation) -> dict:
    """The derived columns of one stored label row (see the module docstring)."""
    entries = row["option_probs"] or []
    cands = row.get("candidates") or []
    if row.get("mode", "").startswith("pointwise"):
        dist = {e["order"]: e["probs"] for e in entries}
        sa, sb = expected_score(dist["A"], cands), expected_score(dist["B"], cands)
        p_ab = p_ba = None
        p_a = p_greater(dist["A"], dist["B"])
        consistent = pos = None
    else:
        sa = sb = None
        per: dict[str, list[float]] = {"AB": [], "BA": []}
        for e in entries:
            pa = e["probs"][0] if e["order"] == "AB" else e["probs"][1]  # P(A better) in this order
            if d.cot_clamp:
                pa = min(max(pa, d.cot_clamp[0]), d.cot_clamp[1])
            per[e["order"]].append(pa)
        p_ab = sum(per["AB"]) / len(per["AB"]) if per["AB"] else None
        p_ba = sum(per["BA"]) / len(per["BA"]) if per["BA"] else None
        present = [v for v in (p_ab, p_ba) if v is not None]
        p_a = sum(present) / len(present)
        if p_ab is not None and p_ba is not None:
            pos = position_preferred(p_ab, p_ba)
            consistent = pos is None
        else:
            consistent = pos = None
    p_a = apply_temperature(p_a, d.temperature)
    return {
        "p_ab": p_ab,
        "p_ba": p_ba,
        "p_a": p_a,
        "hard_label": winner(p_a, d.tie_margin),
        "confidence": confidence(p_a),
        "consistent": consistent,
        "position_preferred": pos,
        "score_a": sa,
        "score_b": sb,
    }


def derive_table(table, d: Derivation):
    """A stored label table plus the derived columns (in the LABELS schema order)."""
    import pyarrow as pa

    from .records import LABELS

    if "option_probs" not in table.column_names:
        raise StoreError("these labels were stored by an older aifeedback (no option_probs column); re-run `aifeedback label` with the same --run-dir to relabel them")
    rows = table.select(["mode", "option_probs", "candidates"]).to_pylist()
    derived = [derive(r, d) for r in rows]
    cols = {name: table.column(name) for name in table.column_names}
    for name in DERIVED_COLUMNS:
        cols[name] = pa.array([x[name] for x in derived], type=LABELS.field(name).type)
    return pa.table({f.name: cols[f.name] for f in LABELS}, schema=LABELS)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def trl_pair(row: dict) -> dict | None:
    """TRL's conversational preference row for a derived label row, or None for a tie.

    ``chosen`` is the :func:`winner`; ``p_chosen`` its soft label; ``chosen_was`` "A" or "B".
    """
    w = row["hard_label"]
    if w not in ("A", "B"):
        return None
    win, lose = ("a", "b") if w == "A" else ("b", "a")
    return {
        "prompt": row["messages"],
        "chosen": _assistant(row[f"response_{win}"]),
        "rejected": _assistant(row[f"response_{lose}"]),
        "p_chosen": row["p_a"] if w == "A" else 1 - row["p_a"],
        "chosen_was": w,
    }


# the filter -------------------------------------------------------------------
Consistency = Literal["any", "drop_inconsistent", "consistent_only"]
CONSISTENCY: tuple[str, ...] = Consistency.__args__
DROP_REASONS = ("inconsistent", "consistency_unknown", "below_min_confidence")

# Each option is declared once: every config that filters pairs (export, reward model, DPO) uses these types.
MinConfidence = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="Drop pairs whose label confidence |2 p(A>B) - 1| is below this; 0 keeps every pair. Above 0, a pair with no recorded confidence is dropped too.",
    ),
]
ConsistencyFilter = Annotated[
    Consistency,
    Field(
        description=(
            "Filter on whether the two presentation orders agreed: any keeps every pair; drop_inconsistent drops pairs whose two orders disagreed; "
            "consistent_only keeps only pairs scored in both orders that agreed. A pair scored in one order only (single-order, pointwise, imported "
            "or reward-model labels) was never checked: it is not inconsistent, so only consistent_only drops it."
        )
    ),
]

R = TypeVar("R", bound=Mapping)


def drop_reason(row: Mapping, min_confidence: float = 0.0, consistency: Consistency = "any") -> str | None:
    """Why :func:`select` drops ``row`` (one of DROP_REASONS; consistency is checked first), or None when it is kept."""
    consistent = row.get("consistent")
    if consistency != "any" and consistent is False:
        return "inconsistent"
    if consistency == "consistent_only" and consistent is None:
        return "consistency_unknown"
    if min_confidence > 0:
        conf = row.get("confidence")
        if conf is None or conf < min_confidence:
            return "below_min_confidence"
    return None


def select(rows: Iterable[R], min_confidence: float = 0.0, consistency: Consistency = "any") -> tuple[list[R], dict[str, int]]:
    """The one preference filter: the rows kept (in order) and how many were dropped, by reason (each row counts once).

    ``rows`` are derived label rows (dicts, as ``RunStore.read_table("labels").to_pylist()``
    gives them); only their ``confidence`` and ``consistent`` are read. The rule for a missing
    value is the one in the descriptions of :data:`MinConfidence` and :data:`ConsistencyFilter`.
    Ties are not a filter here: whether a tie is a pair to keep depends on the caller (soft
    labels keep it; TRL rows cannot hold it).
    """
    if not 0 <= min_confidence <= 1:
        raise ConfigError(f"min_confidence must be in [0, 1] (confidence is |2 p(A>B) - 1|), got {min_confidence}")
    if consistency not in CONSISTENCY:
        raise ConfigError(f"consistency must be one of {', '.join(CONSISTENCY)}, got {consistency!r}")
    kept: list[R] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for r in rows:
        reason = drop_reason(r, min_confidence, consistency)
        if reason is None:
            kept.append(r)
        else:
            dropped[reason] += 1
    return kept, dropped
