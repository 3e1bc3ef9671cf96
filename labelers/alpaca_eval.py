"""AlpacaEval annotations as AI labels (``import-labels --format alpaca-eval``).

AlpacaEval 2.0 compares each generator's output with one reference output per
instruction. ``preference`` = 1 + P(the generator's output is better), GPT-4-turbo's
weighted verdict read from its log-probs. A folder holds ``references.jsonl.gz``
(instruction_id, instruction, dataset, reference_generator, reference_output) and
``annotations.jsonl.gz`` (instruction_id, generator, output, preference); see
../shared/data/alpaca-eval/README.md.

- annotation pair ``ae-{instruction_id}-{generator}``: response_a = the reference,
  response_b = the output, P(A better) = 2 - preference, prob_source "imported:probability";
- derived pair ``ae-{instruction_id}-{gen1}-vs-{gen2}``, two generators on the same
  instruction through the shared reference (Bradley–Terry): P(gen1 beats gen2) =
  σ(logit p1 − logit p2), p_i = P(gen_i beats the reference) clipped to [eps, 1 − eps];
  prob_source "derived:bradley_terry", and ``raw`` names the two source pairs;
- a bad row (unreadable line, missing key, preference not a number in [1, 2], unknown
  instruction, repeated instruction and generator) is an exclusion row with a reason.
  Pairs with an empty output or one equal to the reference are excluded by the label job
  (records.pair_problem), and no derived pair is built from them.

Each row's ``raw`` is its provenance as JSON: file, line, instruction, generator(s), the
judge's number, and the AlpacaEval commit the folder's README names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from aifeedback.batches import Excluded
from aifeedback.config_base import StrictModel
from aifeedback.errors import InputError
from aifeedback.records import exclusion, pair_problem, stable_id

JUDGE = "gpt-4-turbo (alpaca_eval weighted_alpaca_eval_gpt4_turbo)"
ANNOTATION_SOURCE = "imported:probability"
DERIVED_SOURCE = "derived:bradley_terry"
VARIANTS = ("", "_concise", "_verbose")  # the same model asked for default, shorter, longer answers


class AlpacaEvalConfig(StrictModel):
    """How AlpacaEval annotations become pairs (``import-labels --format alpaca-eval``)."""

    derive_pairs: Literal["none", "contrast", "all"] = Field(
        "none",
        description="Pairs between two generators on the same instruction, derived through the shared reference (Bradley-Terry): "
        "none; contrast (a model against its _concise / _verbose variants, which shows the judge's length preference); all (every two generators, 78 per instruction with 13).",
    )
    eps: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Derived pairs: each P(generator beats the reference) is clipped to [eps, 1 - eps] before its log-odds. "
        "Below 1% it is the tail of the judge's top log-probs, so two clear losses to the reference derive 0.5, not a confident verdict.",
    )
    instructions: int | None = Field(None, ge=1, description="Only the first N instructions of references.jsonl.gz and their annotations.")


def bradley_terry(p1: float, p2: float, eps: float) -> float:
    """P(1 beats 2) from P(1 beats R) and P(2 beats R), each clipped to [eps, 1 - eps]: σ(logit p1 − logit p2)."""
    l1, l2 = (math.log(c / (1 - c)) for c in (min(max(p, eps), 1 - eps) for p in (p1, p2)))
    return 1 / (1 + math.exp(-(l1 - l2)))


def variant(generator: str) -> tuple[str, int]:
    """(base model, variant index): ``alpaca-7b_verbose`` -> (``alpaca-7b``, 2)."""
    for i, suffix in enumerate(VARIANTS[1:], 1):
        if generator.endswith(suffix):
            return generator[: -len(suffix)], i
    return generator, 0


def _order(generator: str) -> tuple[str, int, str]:
    base, i = variant(generator)
    return base.lower(), i, generator


def derived_pairs(generators: list[str], mode: str) -> list[tuple[str, str]]:
    """The (gen1, gen2) pairs of one instruction, in one fixed orientation: a base model before its variants."""
    ordered = sorted(set(generators), key=_order)
    if mode == "none":
        return []
    pairs = list(itertools.combinations(ordered, 2))
    return pairs if mode == "all" else [(a, b) for a, b in pairs if variant(a)[0] == variant(b)[0]]


def find_files(source: str) -> tuple[Path, Path]:
    """(annotations, references) from a folder holding both, or the annotations file with the references beside it."""
    p = Path(source).expanduser()
    folder = p if p.is_dir() else p.parent

    def pick(stem: str) -> Path | None:
        return next((f for f in (folder / f"{stem}.jsonl.gz", folder / f"{stem}.jsonl") if f.is_file()), None)

    ann = pick("annotations") if p.is_dir() else (p if p.is_file() else None)
    ref = pick("references")
    if ann is None or ref is None:
        raise InputError(
            f"{p} is not an AlpacaEval folder: it needs annotations.jsonl[.gz] and references.jsonl[.gz] side by side "
            f"(found {sorted(f.name for f in folder.iterdir()) if folder.is_dir() else 'no folder'}); pass the folder, e.g. ../shared/data/alpaca-eval"
        )
    return ann, ref


def read_references(path: Path, limit: int | None = None) -> tuple[dict[str, dict], set[str]]:
    """instruction_id -> reference row for the first ``limit`` instructions; and the ids of the rest of the file."""
    from aifeedback.io import iter_rows

    refs: dict[str, dict] = {}
    rest: set[str] = set()
    for n, row in enumerate(iter_rows(path), 1):
        if isinstance(row, tuple):
            raise InputError(f"{path}: {row[1]}; the references file must be readable in full, as AlpacaEval publishes it")
        missing = [k for k in ("instruction_id", "instruction", "reference_output") if k not in row]
        if missing:
            raise InputError(f"{path} line {n} has no {missing}; an AlpacaEval references file has instruction_id, instruction, reference_output per line")
        iid = str(row["instruction_id"])
        if iid in refs or iid in rest:
            raise InputError(f"{path} line {n}: instruction_id {iid} appears twice; each instruction has one reference")
        if limit is not None and len(refs) >= limit:
            rest.add(iid)
        else:
            refs[iid] = row
    if not refs:
        raise InputError(f"{path} holds no references; pass the AlpacaEval folder")
    return refs, rest


def readme_commit(folder: Path) -> str | None:
    """The AlpacaEval commit the folder's README.md names ("at commit cd543a1"), or None."""
    readme = folder / "README.md"
    m = re.search(r"at commit ([0-9a-f]{7,40})", readme.read_text(encoding="utf-8", errors="replace")) if readme.is_file() else None
    return m.group(1) if m else None


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _preference_problem(pref) -> tuple[str, str] | None:
    if isinstance(pref, bool) or not isinstance(pref, (int, float)):
        return "preference_not_a_number", f"preference must be a number in [1, 2], got {type(pref).__name__}"
    if not 1.0 <= pref <= 2.0:  # also rejects NaN
        return "preference_out_of_range", f"preference must be in [1, 2] (1 + P(output beats the reference)), got {pref}"
    return None


@dataclass
class AlpacaEvalData:
    """One AlpacaEval folder read: annotation pairs (with their verdict), input exclusions, and what the manifest records."""

    annotations: Path
    references: Path
    digest: str
    commit: str | None
    pairs: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def manifest(self, cfg: AlpacaEvalConfig) -> dict:
        return {
            "annotations": str(self.annotations.resolve()),
            "references": str(self.references.resolve()),
            "alpaca_eval_commit": self.commit,
            "config": cfg.model_dump(mode="json"),
            "counts": self.counts,
        }


def read_alpaca_eval(source: str, cfg: AlpacaEvalConfig) -> AlpacaEvalData:
    """The annotation pairs of ``source`` (AlpacaEval folder or annotations file), bad rows as exclusion rows."""
    from aifeedback.io import iter_rows

    ann, ref = find_files(source)
    refs, rest = read_references(ref, cfg.instructions)
    data = AlpacaEvalData(ann, ref, _digest(ann, ref), readme_commit(ann.parent))
    base = {"source": ann.name, "alpaca_eval_commit": data.commit}
    seen: set[str] = set()
    rows = skipped = 0
    for n, row in enumerate(iter_rows(ann), 1):
        if isinstance(row, tuple):
            rows += 1
            data.excluded.append(exclusion(f"ae-line-{n}", "labels", "invalid_row", f"{ann.name} {row[1]}"))
            continue
        iid = None if row.get("instruction_id") is None else str(row["instruction_id"])
        if iid in rest:  # an instruction past `instructions`: not part of this import
            skipped += 1
            continue
        rows += 1
        raw = json.dumps({**base, "line": n, **{k: v for k, v in row.items() if k != "output"}}, default=str, ensure_ascii=False)
        gen = row.get("generator")
        if iid is None or not isinstance(gen, str) or not gen:
            data.excluded.append(exclusion(f"ae-line-{n}", "labels", "invalid_row", f"{ann.name} line {n} needs instruction_id and generator; got keys {sorted(row)}", raw))
            continue
        pid = f"ae-{iid}-{gen}"
        if iid not in refs:
            data.excluded.append(exclusion(pid, "labels", "unknown_instruction", f"instruction_id {iid} is not in {ref.name}; the pair has no reference to compare with", raw))
            continue
        if pid in seen:
            data.excluded.append(exclusion(f"{pid}@line-{n}", "labels", "duplicate_id", f"{gen} has a second annotation for instruction {iid} (line {n}); the first is kept", raw))
            continue
        seen.add(pid)
        bad = _preference_problem(row.get("preference"))
        if bad:
            data.excluded.append(exclusion(pid, "labels", *bad, raw))
            continue
        r = refs[iid]
        messages = [{"role": "user", "content": r["instruction"]}]
        pref = float(row["preference"])
        prov = {**base, "line": n, "instruction_id": iid, "generator": gen, "reference_generator": r.get("reference_generator"), "dataset": r.get("dataset"), "preference": pref}
        data.pairs.append(
            {
                "pair_id": pid,
                "prompt_id": stable_id(messages),
                "messages": messages,
                "response_a": r["reference_output"],
                "response_b": row.get("output"),
                "verdict": {"p_a": 2.0 - pref, "source": ANNOTATION_SOURCE, "raw": json.dumps(prov, ensure_ascii=False)},
                "generator": gen,
                "instruction_id": iid,
            }
        )
    n_derived = sum(len(derived_pairs(list(gens), cfg.derive_pairs)) for gens in _usable(data).values())
    data.counts = {"annotation_rows": rows, "annotation_pairs": len(data.pairs), "excluded_on_read": len(data.excluded), "derived_pairs": n_derived, "rows_past_instructions": skipped, "instructions": len(refs)}
    return data


def _usable(data: AlpacaEvalData) -> dict[str, dict[str, dict]]:
    """instruction_id -> generator -> annotation pair, for the pairs a label job can use (the sources of derived pairs)."""
    out: dict[str, dict[str, dict]] = {}
    for p in data.pairs:
        if pair_problem(p) is None:
            out.setdefault(p["instruction_id"], {})[p["generator"]] = p
    return out


def derive(data: AlpacaEvalData, cfg: AlpacaEvalConfig) -> Iterator[dict]:
    """Derived pairs between generators of one instruction, from annotation pairs a label job can use."""
    for iid, gens in _usable(data).items():
        for g1, g2 in derived_pairs(list(gens), cfg.derive_pairs):
            a, b = gens[g1], gens[g2]
            p1, p2 = 1.0 - a["verdict"]["p_a"], 1.0 - b["verdict"]["p_a"]  # P(gen beats the reference)
            prov = {"derived": "bradley_terry", "from": [a["pair_id"], b["pair_id"]], "generators": [g1, g2], "instruction_id": iid, "p_beats_reference": [p1, p2], "eps": cfg.eps, "source": data.annotations.name, "alpaca_eval_commit": data.commit}
            yield {
                "pair_id": f"ae-{iid}-{g1}-vs-{g2}",
                "prompt_id": a["prompt_id"],
                "messages": a["messages"],
                "response_a": a["response_b"],
                "response_b": b["response_b"],
                "verdict": {"p_a": bradley_terry(p1, p2, cfg.eps), "source": DERIVED_SOURCE, "raw": json.dumps(prov, ensure_ascii=False)},
            }


def alpaca_eval_items(data: AlpacaEvalData, cfg: AlpacaEvalConfig) -> Iterator[dict | Excluded]:
    """The label stage's input: exclusions on read, annotation pairs, then derived pairs."""
    for e in data.excluded:
        yield Excluded(e)
    keep = ("pair_id", "prompt_id", "messages", "response_a", "response_b", "verdict")
    for p in data.pairs:
        yield {k: p[k] for k in keep}
    yield from derive(data, cfg)
