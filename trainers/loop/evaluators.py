"""The loop's evaluators: several reward models judge the same held-out pairs, so no one evaluator's taste is the only witness.

Here: how the ``evaluator`` setting names them (:func:`parse_evaluators`), what identifies one in the eval
stage's marker (:meth:`Evaluator.identity`), how often two of them pick the same winner (:func:`pair_agreement`),
and the evaluator card a reward model folder may carry (``evaluation.json``, :class:`EvaluatorCard`): what the
model was trained on and its accuracy on human-labelled sets, in and out of its training domain. The loop's
report shows the card beside each evaluator's win rate, so a reader can judge how far to trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from pydantic import Field, ValidationError

from aifeedback.config import StrictModel
from aifeedback.errors import InputError

EVALUATION_FILE = "evaluation.json"  # the evaluator card, in the reward model's folder
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class SetAccuracy(StrictModel):
    """The reward model on one human-labelled pairwise set."""

    set: str = Field(description="The set's name, e.g. llmbar-natural or pandalm-held-out.")
    n: int = Field(ge=1, description="Pairs scored: those with a non-tie human label.")
    accuracy: float = Field(ge=0, le=1, description="Share of those pairs where the reward model gives the human-preferred response the higher reward.")
    prefer_longer: float | None = Field(None, ge=0, le=1, description="The same share for the prefer-the-longer-response rule on the same pairs (the baseline to beat); null if not measured.")
    vs_prefer_longer_ci: list[float] | None = Field(None, min_length=2, max_length=2, description="95% CI of accuracy minus prefer_longer on the same pairs, by a paired bootstrap over pairs (trainers.loop.stats.paired_difference): an interval holding 0 means the set cannot tell the two apart; null if not measured.")
    in_domain: bool = Field(description="true: the set comes from the reward model's training distribution (e.g. held-out items of its training set); false: out of domain.")


class EvaluatorCard(StrictModel):
    """``evaluation.json`` in a reward model folder: written by whoever trains or measures the model (bench/), read by the loop's report.

    Example::

        {"training_data": "PandaLM test set, human majority, 311 items disjoint from the labeler's",
         "sets": [{"set": "pandalm-held-out", "n": 177, "accuracy": 0.763, "prefer_longer": 0.644, "in_domain": true},
                  {"set": "llmbar-natural", "n": 100, "accuracy": 0.46, "prefer_longer": 0.56, "in_domain": false}]}
    """

    training_data: str = Field(min_length=1, description="What the reward model was trained on: the pairs and whose labels.")
    sets: list[SetAccuracy] = Field(default_factory=list, description="Its accuracy on human-labelled sets; those with in_domain false are its out-of-domain accuracy.")


def set_accuracy(name: str, rows: list[dict], r_a: list[float], r_b: list[float], in_domain: bool, n_boot: int = 2000, seed: int = 0) -> SetAccuracy:
    """A card's entry for one set from a reward model's rewards of its pairs: rows with a human A or B (others are
    not scored: drop them first), r_a and r_b the rewards of response_a and response_b. A pair is a hit when the
    human-preferred response has the higher reward; prefer-longer (trainers.reward_trainer.longer_side) misses pairs
    of equal length."""
    from trainers.reward_trainer import longer_side

    from .stats import paired_difference

    if any(r.get("human") not in ("A", "B") for r in rows) or not (len(rows) == len(r_a) == len(r_b)) or not rows:
        raise ValueError(f"set_accuracy({name!r}) takes the pairs with a human A or B and one reward of each response per pair")
    hits = [(a > b) == (r["human"] == "A") for r, a, b in zip(rows, r_a, r_b)]
    longer = [longer_side(r) == r["human"] for r in rows]
    diff = paired_difference(hits, longer, n_boot, seed)
    return SetAccuracy(set=name, n=len(rows), accuracy=sum(hits) / len(rows), prefer_longer=sum(longer) / len(rows), vs_prefer_longer_ci=diff["ci"], in_domain=in_domain)


def write_card(folder: str | Path, card: EvaluatorCard | dict) -> Path:
    """Validate ``card`` and write it as FOLDER/evaluation.json."""
    card = EvaluatorCard.model_validate(card)
    dest = Path(folder) / EVALUATION_FILE
    dest.write_text(card.model_dump_json(indent=2) + "\n")
    return dest


def read_card(folder: str | Path) -> EvaluatorCard | None:
    """FOLDER/evaluation.json, validated (None when there is none); an InputError naming the fix when it is malformed."""
    path = Path(folder) / EVALUATION_FILE
    if not path.is_file():
        return None
    fix = "write it with trainers.loop.evaluators.write_card (schema: EvaluatorCard), or delete it"
    try:
        return EvaluatorCard.model_validate(json.loads(path.read_text()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"{path} is not an evaluator card ({problems}); {fix}") from None
    except ValueError as exc:  # not JSON
        raise InputError(f"{path} is not an evaluator card (not JSON: {exc}); {fix}") from None


def readme_provenance(folder: str | Path) -> dict | None:
    """The ``## Provenance`` JSON block that RewardTrainer.save writes into README.md (None when absent or unreadable)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    _, _, rest = text.partition("## Provenance\n```json\n")
    block, fence, _ = rest.partition("\n```")
    if not fence:
        return None
    try:
        data = json.loads(block)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def describe(folder: str | Path) -> dict:
    """What the report says about one evaluator: its training data and its accuracy on human sets, or "not recorded".

    ``training_data`` is the card's; without a card, the provenance RewardTrainer.save wrote into README.md
    (the bookkeeping keys, versions, commit and pair ids, left out); else None. ``card_error`` holds a malformed
    card's message instead of failing the report.
    """
    out: dict = {"path": str(folder), "card": None, "card_error": None, "training_data": None, "training_data_source": None, "sets": []}
    if not Path(folder).is_dir():
        out["card_error"] = f"folder {folder} not found"
        return out
    try:
        card = read_card(folder)
    except InputError as exc:
        card, out["card_error"] = None, str(exc)
    if card is not None:
        out.update(card=str(Path(folder) / EVALUATION_FILE), training_data=card.training_data, training_data_source=EVALUATION_FILE, sets=[s.model_dump() for s in card.sets])
        return out
    prov = readme_provenance(folder)
    if prov:
        kept = {k: v for k, v in prov.items() if k not in ("versions", "git_commit", "train_pair_ids")}
        out.update(training_data=", ".join(f"{k} {v}" for k, v in kept.items()) or None, training_data_source="README.md provenance")
    return out


@dataclass(frozen=True)
class Evaluator:
    """One evaluator of the loop: a reward model folder and the name the report gives it."""

    name: str
    path: str

    def identity(self) -> dict:
        """What the eval marker records and compares on a re-run: the name, the resolved folder and the weights file's
        size and modification time (so a model retrained in place is scored again)."""
        p = Path(self.path).resolve()
        w = next((p / f for f in WEIGHT_FILES if (p / f).is_file()), None)
        st = w.stat() if w else None
        return {"name": self.name, "path": str(p), "weights": f"{w.name}:{st.st_size}:{st.st_mtime_ns}" if w else "none"}


def parse_evaluators(value: str | list[str] | None) -> list[Evaluator]:
    """``"a,b"``, ``["a", "b"]`` or ``"human=runs/x/evaluator"`` -> evaluators; a name is NAME= or the folder's name."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for raw in items:
        text = str(raw).strip()
        name, sep, path = text.partition("=")
        if not sep:
            name, path = "", text
        name, path = name.strip(), path.strip()
        if not path:
            raise ValueError(f"evaluator entry {raw!r} names no folder; give PATH or NAME=PATH, several separated by commas (e.g. evaluator=runs/rms/evaluator,ood=runs/rms-ood/evaluator)")
        out.append(Evaluator(name or Path(path).name or Path(path).resolve().name, path))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"evaluators share the name {', '.join(dup)}: name each NAME=PATH, e.g. evaluator=human={out[0].path},other=PATH")
    return out


def verdicts(new: list[dict], base: list[dict]) -> dict[tuple, int]:
    """Per (prompt_id, sample_index) pair one evaluator's verdict (stats.verdict): 1 new wins, -1 the initial wins, 0 a tie."""
    from .stats import verdict

    b = {(r["prompt_id"], r["sample_index"]): r for r in base}
    return {(r["prompt_id"], r["sample_index"]): verdict(r, b[(r["prompt_id"], r["sample_index"])]) for r in new if (r["prompt_id"], r["sample_index"]) in b}


def pair_agreement(by_evaluator: dict[str, dict[tuple, int]]) -> list[dict]:
    """For each two evaluators (in the given order), the share of (new, initial) pairs on which they pick the same winner.

    Ties are left out, not counted either way: a pair that either evaluator scores equal (verdict 0) does not
    enter ``agreement`` and is counted in ``n_tied``; ``n`` is the pairs compared. ``chance`` is the agreement
    two independent evaluators with these win rates (on the compared pairs) would reach: p_a p_b + (1 - p_a)(1 - p_b).
    ``agreement`` and ``chance`` are None when no pair is left.
    """
    out = []
    for a, b in combinations(by_evaluator, 2):
        va, vb = by_evaluator[a], by_evaluator[b]
        common = [k for k in va if k in vb]
        both = [k for k in common if va[k] != 0 and vb[k] != 0]
        n = len(both)
        agree = sum(va[k] == vb[k] for k in both)
        pa = sum(va[k] == 1 for k in both) / n if n else None
        pb = sum(vb[k] == 1 for k in both) / n if n else None
        out.append({"a": a, "b": b, "agreement": agree / n if n else None, "n": n, "n_tied": len(common) - n, "chance": pa * pb + (1 - pa) * (1 - pb) if n else None})
    return out


def agreement_matrix(names: list[str], pairs: list[dict]) -> dict:
    """The pairs of :func:`pair_agreement` as a symmetric matrix (1 on the diagonal; None where not compared)."""
    share = {(p["a"], p["b"]): p["agreement"] for p in pairs}
    rows = [[1.0 if a == b else share.get((a, b), share.get((b, a))) for b in names] for a in names]
    return {"evaluators": names, "agreement": rows}
