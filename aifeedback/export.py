"""What an exported data set holds: TRL-ready rows with provenance, the filters, and the seeded split.

Configs, each built only from a stage the run has:

- ``preferences``: AI-labelled pairs in TRL's conversational ``prompt``/``chosen``/``rejected``
  columns (chosen = the winner, aifeedback.preference.winner); ties are left out, and the
  ``min_confidence`` and ``consistency`` filters (aifeedback.preference.select) apply here only.
- ``sft``: constitutional revisions, ``messages`` = prompt + final revision (revised,
  non-degenerate rows), with the critique/revision chain.
- ``revision_preferences``: the final revision (chosen) over the initial response (rejected).
- ``pointwise``: one row per rated response with its expected 1-10 score, from pointwise labels.

The split is by prompt (a content hash of its messages), seeded and shared by every
config, so a prompt is never in train for one config and in test for another.

Heavy imports (pyarrow, the revision module) happen inside the functions, so the CLI can
read the option help from here without loading them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import yaml
from pydantic import ConfigDict, Field, field_validator

from .config import StrictModel
from .preference import ConsistencyFilter, MinConfidence, select, trl_pair

SPLITS = ("train", "test")


class ExportOptions(StrictModel):
    """What ``aifeedback export`` keeps and how it splits; the filters apply to the ``preferences`` config only."""

    model_config = ConfigDict(frozen=True)

    test_size: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts held out as the test split (by prompt, shared by all configs); 0 writes train only.")
    seed: int = Field(0, description="Seed of the train/test assignment of prompts.")
    min_confidence: MinConfidence = 0.0
    consistency: ConsistencyFilter = "any"
    drop_suspected_injection: bool = Field(False, description="preferences: drop pairs where a response addresses the judge (label rows' injection_flags, labelers/injection.py).")
    license: str = Field("other", description="License id for the card's metadata (e.g. cc-by-4.0); the default 'other' asserts none: pick the one your prompts and models allow.")

    @field_validator("license")
    @classmethod
    def _license(cls, v: str) -> str:
        if not v or not v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"license must be a Hub license id such as cc-by-4.0, mit or other, got {v!r}")
        return v


def option_help(name: str) -> str:
    """The help of an export option: its ``Field`` description."""
    return ExportOptions.model_fields[name].description


def _schemas() -> dict:
    import pyarrow as pa

    from .records import MESSAGES, ROUND

    s, f, strs = pa.string(), pa.float64(), pa.list_(pa.string())
    label_prov = [("labeler_model", s), ("labeler_backend", s), ("mode", s), ("template", s), ("template_version", s), ("constitution_id", s), ("constitution_version", s), ("seed", pa.int64())]
    revision_prov = [("prompt_id", s), ("revision_id", s), ("constitution_id", s), ("constitution_version", s), ("principle_ids", strs), ("model", s), ("seed", pa.int64())]
    pair = [("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)]
    return {
        "preferences": pa.schema(
            [*pair, ("p_chosen", f), ("confidence", f), ("consistent", pa.bool_()), ("chosen_was", s), ("orders", strs), ("principle_ids", strs), ("injection_flags", strs), *label_prov, ("pair_id", s), ("prompt_id", s), ("config_hash", s)]
        ),
        "sft": pa.schema([("messages", MESSAGES), *revision_prov, ("rounds", pa.list_(ROUND)), ("initial_response", s)]),
        "revision_preferences": pa.schema([*pair, *revision_prov]),
        "pointwise": pa.schema([("prompt", MESSAGES), ("response", s), ("score", f), ("n_ratings", pa.int32()), ("pair_ids", strs), *label_prov, ("prompt_id", s)]),
    }


# Columns a row builder emits that are deliberately not exported (none today). Any other
# column missing from a config's schema is a bug: build_tables refuses to drop it silently.
INTERNAL_COLUMNS: dict[str, set[str]] = {"preferences": set(), "sft": set(), "revision_preferences": set(), "pointwise": set()}


def check_columns(name: str, rows: list[dict], schema) -> None:
    """Every column of ``rows`` reaches ``schema`` or is listed in INTERNAL_COLUMNS."""
    emitted = set().union(*(r.keys() for r in rows)) if rows else set()
    lost = emitted - set(schema.names) - INTERNAL_COLUMNS.get(name, set())
    if lost:
        raise AssertionError(f"export config {name!r}: columns {sorted(lost)} are built but not in its schema; add them to _schemas() or to INTERNAL_COLUMNS")


def _label_provenance(r: dict) -> dict:
    return {
        "labeler_model": r["labeler_model"],
        "labeler_backend": r["backend"],
        "mode": r["mode"],
        "template": r["template"],
        "template_version": r["template_version"],
        "constitution_id": r["constitution_id"],
        "constitution_version": r["constitution_version"],
        "seed": r["seed"],
    }


def preference_rows(labels: list[dict], opts: ExportOptions) -> tuple[list[dict], dict]:
    """TRL preference rows from label rows, and how many each filter removed (each row counts once, first filter wins).

    Ties go first (the one definition of a tie, aifeedback.preference.winner), then
    aifeedback.preference.select (consistency, min_confidence), then suspected injection.
    """
    decided = [r for r in labels if trl_pair(r) is not None]
    kept, dropped = select(decided, opts.min_confidence, opts.consistency)
    counts = {"label_rows": len(labels), "ties": len(labels) - len(decided), **dropped, "suspected_injection": 0}
    rows = []
    for r in kept:
        if opts.drop_suspected_injection and r.get("injection_flags"):
            counts["suspected_injection"] += 1
            continue
        pair = trl_pair(r)
        rows.append(
            {
                **pair,
                "confidence": r["confidence"],
                "consistent": r["consistent"],
                "orders": r["orders"],
                "principle_ids": r["principle_ids"],
                "injection_flags": r.get("injection_flags") or [],
                **_label_provenance(r),
                "pair_id": r["pair_id"],
                "prompt_id": r["prompt_id"],
                "config_hash": r["config_hash"],
            }
        )
    counts["exported"] = len(rows)
    return rows, counts


def _kept_revisions(revisions: list[dict]) -> tuple[list[dict], dict]:
    kept = [r for r in revisions if r["revised"] and not r["degenerate"]]
    counts = {
        "revision_rows": len(revisions),
        "not_revised": sum(1 for r in revisions if not r["revised"]),
        "degenerate": sum(1 for r in revisions if r["revised"] and r["degenerate"]),
        "exported": len(kept),
    }
    return kept, counts


def sft_rows(revisions: list[dict]) -> tuple[list[dict], dict]:
    """Prompt + final revision as TRL conversational ``messages``, with the revision chain."""
    from .revision import sft_rows as base

    kept, counts = _kept_revisions(revisions)
    return [{**s, "rounds": r["rounds"], "initial_response": r["initial_response"]} for s, r in zip(base(kept), kept)], counts


def revision_preference_rows(revisions: list[dict]) -> tuple[list[dict], dict]:
    from .revision import revision_pairs

    kept, counts = _kept_revisions(revisions)
    return revision_pairs(kept), counts


def pointwise_rows(labels: list[dict]) -> tuple[list[dict], dict]:
    """One row per (prompt, response) rated in pointwise mode; a response rated in several pairs gets its mean score."""
    by_key: dict[tuple, dict] = {}
    pw = [r for r in labels if (r["mode"] or "").startswith("pointwise")]
    for r in pw:
        pkey = prompt_key(r["messages"])
        for side in ("a", "b"):
            score = r[f"score_{side}"]
            if score is None:
                continue
            row = by_key.setdefault(
                (pkey, r[f"response_{side}"], r["template_version"], r["labeler_model"]),
                {"prompt": r["messages"], "response": r[f"response_{side}"], "scores": [], "pair_ids": [], **_label_provenance(r), "prompt_id": r["prompt_id"]},
            )
            row["scores"].append(score)
            if r["pair_id"] not in row["pair_ids"]:
                row["pair_ids"].append(r["pair_id"])
    rows = []
    for row in by_key.values():
        scores = row.pop("scores")
        rows.append({**row, "score": sum(scores) / len(scores), "n_ratings": len(scores)})
    return rows, {"pointwise_label_rows": len(pw), "ratings": sum(r["n_ratings"] for r in rows), "exported": len(rows)}


def prompt_key(messages: list[dict]) -> str:
    from .records import stable_id

    return stable_id([{"role": m["role"], "content": m["content"]} for m in messages])


def assign_splits(keys: set[str], test_size: float, seed: int) -> dict[str, str]:
    """Seeded prompt -> split map: round(test_size * n) prompts (at least 1, leaving 1 for train) go to test."""
    ordered = sorted(keys)
    random.Random(seed).shuffle(ordered)
    n_test = 0
    if test_size > 0 and len(ordered) >= 2:
        n_test = min(max(1, round(test_size * len(ordered))), len(ordered) - 1)
    return {k: ("test" if i < n_test else "train") for i, k in enumerate(ordered)}


@dataclass
class ExportTables:
    """Every config's rows per split (only non-empty splits), the filter counts, and notes on what was left out."""

    tables: dict[str, dict[str, object]]  # config -> split -> pyarrow.Table
    counts: dict[str, dict]
    notes: list[str]
    n_prompts: dict[str, int]


def build_tables(labels: list[dict] | None, revisions: list[dict] | None, opts: ExportOptions) -> ExportTables:
    """The export's tables from a run's label rows and revision rows (None when the stage is absent)."""
    import pyarrow as pa

    built: dict[str, list[dict]] = {}
    counts: dict[str, dict] = {}
    notes: list[str] = []
    if labels is not None:
        built["preferences"], counts["preferences"] = preference_rows(labels, opts)
        rows, c = pointwise_rows(labels)
        if rows:
            built["pointwise"], counts["pointwise"] = rows, c
        else:
            notes.append("pointwise: the labels have no pointwise ratings (label with `--method pointwise` for them); config omitted")
    else:
        notes.append("preferences, pointwise: the run has no labels stage (`aifeedback label`); configs omitted")
    if revisions is not None:
        built["sft"], counts["sft"] = sft_rows(revisions)
        built["revision_preferences"], counts["revision_preferences"] = revision_preference_rows(revisions)
    else:
        notes.append("sft, revision_preferences: the run has no revisions stage (`aifeedback revise`); configs omitted")
    keyed = {name: [(prompt_key(r["messages"][:-1] if name == "sft" else r["prompt"]), r) for r in rows] for name, rows in built.items()}  # sft: drop the revision turn
    # every prompt of the run takes part in the draw, so a prompt's split does not depend on the filters
    split_of = assign_splits({prompt_key(r["messages"]) for r in [*(labels or []), *(revisions or [])]}, opts.test_size, opts.seed)
    schemas = _schemas()
    tables: dict[str, dict[str, pa.Table]] = {}
    n_prompts = {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS}
    for name, pairs in keyed.items():
        if not pairs:
            notes.append(f"{name}: no rows left ({count_line(name, counts[name], opts)}); config omitted")
            continue
        check_columns(name, [r for _, r in pairs], schemas[name])
        per = {s: [r for k, r in pairs if split_of[k] == s] for s in SPLITS}
        tables[name] = {s: pa.Table.from_pylist(rs, schema=schemas[name]) for s, rs in per.items() if rs}
        if opts.test_size > 0 and "test" not in tables[name]:
            notes.append(f"{name}: none of its prompts fell in the test split; train only")
    return ExportTables(tables, counts, notes, n_prompts)


# the dataset card ---------------------------------------------------------------

DESCRIPTIONS = {
    "preferences": "AI-labelled pairs in TRL's conversational preference format (`prompt`, `chosen`, `rejected`) for `DPOTrainer` or reward modelling; `p_chosen` is the labeler's probability for the chosen response",
    "sft": "prompt + final constitutional revision as conversational `messages` for `SFTTrainer`, with the critique/revision chain in `rounds`",
    "revision_preferences": "final revision (`chosen`) over the initial response (`rejected`), TRL columns",
    "pointwise": "`prompt`, `response`, `score`: the labeler's expected 1-10 rating (mean when a response was rated in several pairs)",
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def count_line(name: str, c: dict, opts: ExportOptions) -> str:
    """How a config's rows add up, e.g. '15 label rows = 9 exported + 6 ties + ...'."""
    if name == "preferences":
        return (
            f"{c['label_rows']} label rows = {c['exported']} exported + {c['ties']} ties (hard label `tie`, left out) + "
            f"{c['inconsistent']} inconsistent + {c.get('consistency_unknown', 0)} scored in one order only (consistency={opts.consistency}) + {c['below_min_confidence']} below min_confidence={opts.min_confidence}"
            f" + {c.get('suspected_injection', 0)} suspected injection (drop_suspected_injection={opts.drop_suspected_injection})"
        )
    if name == "pointwise":
        return f"{c['pointwise_label_rows']} pointwise label rows, {c['ratings']} ratings -> {c['exported']} (prompt, response) rows"
    return f"{c['revision_rows']} revision rows = {c['exported']} exported + {c['not_revised']} not revised (filter_regex) + {c['degenerate']} flagged degenerate"


class _CardDumper(yaml.SafeDumper):
    """Multi-line strings as YAML literal blocks, so templates read as they were written."""


_CardDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def _yaml(data) -> str:
    return yaml.dump(data, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=1000)


def _block(lang: str, text: str) -> list[str]:
    fence = "````" if "```" in text else "```"
    return [f"{fence}{lang}", text.rstrip("\n"), fence]


def _details(summary: str, lang: str, text: str) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *_block(lang, text), "", "</details>", ""]


def _fmt(v: float | None, pct: bool = False) -> str:
    return "–" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")


def _usd(v: float | None) -> str:
    return "not priced (backend.prices)" if v is None else f"{v:.6f}"


def render_card(prov: dict, files: dict[str, dict[str, str]], repo_id: str | None = None) -> str:
    """README.md for the export: YAML metadata whose ``configs`` map each config's splits to its files, and the provenance."""
    names = list(files)
    default = "preferences" if "preferences" in names else names[0]
    total = max(sum(v.values()) for v in prov["rows"].values())
    tags = ["rlaif", "synthetic", "aifeedback", "trl"] + (["dpo"] if "preferences" in names else []) + (["sft"] if "sft" in names else [])
    tags += ["constitutional-ai"] if prov["constitutions"] else []
    meta = {
        "license": prov["options"]["license"],
        "pretty_name": f"aifeedback run {prov['run']}",
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [_size_category(total)],
        "configs": [
            {"config_name": n, **({"default": True} if n == default else {}), "data_files": [{"split": s, "path": p} for s, p in files[n].items()]} for n in names
        ],
    }
    stages, opts = prov["stages"], prov["options"]
    models = sorted({m["model"] for m in stages.values() if m.get("model")})
    where = repo_id or "PATH_TO_THIS_FOLDER"
    out = ["---", _yaml(meta).rstrip(), "---", "", f"# {meta['pretty_name']}", ""]
    out += [
        (
            f"RLAIF data exported by `aifeedback export` from run `{prov['run']}` on {prov['exported_at']}. "
            f"The preference labels and revisions come from AI models ({', '.join(f'`{m}`' for m in models)}), not from people. "
            "Every row carries its provenance (labeler model, template version, constitution id and version, principle ids, seed); "
            "this card and `provenance.json` hold the rest."
        ),
        "",
        "## Configs",
        "",
        "| config | " + " | ".join(SPLITS) + " | what |",
        "|---|" + "---|" * len(SPLITS) + "---|",
    ]
    out += [f"| `{n}` | " + " | ".join(str(prov["rows"][n].get(s, 0)) for s in SPLITS) + f" | {DESCRIPTIONS[n]} |" for n in names]
    out += ["", "```python", "from datasets import load_dataset", "", f'ds = load_dataset("{where}", "{default}")', "```", ""]
    if "preferences" in names:
        out += ["`prompt`, `chosen` and `rejected` are what TRL's `DPOTrainer` reads; the other columns are provenance and filters.", ""]
    sp = prov["split"]
    out += ["## How the rows were made", ""]
    out += [f"- **{n}**: {count_line(n, prov['counts'][n], ExportOptions(**opts))}." for n in names if n in prov["counts"]]
    if "preferences" in names:
        out.append(
            "- **preferences**: `chosen` is the AI label's winner: A when p(A>B) > 0.5 by at least the tie margin, else B (`chosen_was`); with both presentation orders (`orders`) "
            "p(A>B) is their mean, so position bias cancels, and `consistent` says whether the two orders agreed. `confidence` = |2 p(A>B) - 1|."
        )
    out += [
        f"- **split**: by {sp['by']}; seed {sp['seed']}, test_size {sp['test_size']}: {sp['prompts'].get('train', 0)} train and {sp['prompts'].get('test', 0)} test prompts.",
    ]
    out += [f"- note: {n}" for n in prov["notes"]]
    out += ["", "## License", "", f"`{opts['license']}`" + (" (none chosen at export: the prompts' and models' licenses apply; re-export with `--license`)." if opts["license"] == "other" else "."), ""]
    if prov["agreement"]:
        out += ["## Agreement with human labels", ""]
        for rep in prov["agreement"]:
            out += [f"From `{rep['path']}` ({rep['title']}); human labels: {rep['human']}" + (f"; human-human ceiling {rep['human_ceiling']:.1%}" if rep.get("human_ceiling") else "") + ".", ""]
            out += ["| judge | n | agreement | 95% CI | Cohen's kappa | order consistency | ECE | this run's labeler |", "|---|---|---|---|---|---|---|---|"]
            for j in rep["judges"]:
                ci = j["agreement_ci95"] or [None, None]
                out.append(f"| {j['judge']} | {j['n']} | {_fmt(j['agreement'], True)} | [{_fmt(ci[0], True)}, {_fmt(ci[1], True)}] | {_fmt(j['kappa'])} | {_fmt(j['consistency'], True)} | {_fmt(j['ece'])} | {'yes' if j['this_run'] else ''} |")
            out.append("")
    out += ["## Provenance", ""]
    out += [f"- **{s}**: model `{m.get('model')}`, git commit `{m.get('git_commit')}`, {m.get('n_in')} in = {m.get('n_out')} out + {m.get('n_excluded')} excluded" + (f", template `{m['template_version']}`" if m.get("template_version") else "") for s, m in stages.items()]
    out += [f"- **export**: git commit `{prov['export_git_commit']}`", ""]
    if prov.get("usage"):  # what the run's model calls took, as the endpoint (or the local tokenizer) counted them
        out += ["| stage | batches | requests | through the Batch API | prompt tokens | completion tokens | cost paid (USD) |", "|---|---|---|---|---|---|---|"]
        out += [f"| {s} | {t['batches']} | {t['requests']} | {t.get('batch_api_requests', 0)} | {t['prompt_tokens']} | {t['completion_tokens']} | {_usd(t['cost_usd'])} |" for s, t in prov["usage"].items()]
        out.append("")
    libs = sorted({lib for m in [*stages.values(), {"versions": prov["export_versions"]}] for lib in (m.get("versions") or {})})
    cols = [*stages, "export"]
    vers = {**{s: m.get("versions") or {} for s, m in stages.items()}, "export": prov["export_versions"]}
    out += ["| library | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {lib} | " + " | ".join(vers[c].get(lib, "–") for c in cols) + " |" for lib in libs]
    out.append("")
    if prov["labeler_template"]:
        out += ["### Labeler template", "", f"`{stages['labels'].get('template_version')}`, as stored in the labels manifest:", ""]
        out += _block("yaml", _yaml(prov["labeler_template"])) + [""]
    for con in prov["constitutions"]:
        out += [f"### Constitution `{con['id']}` {con['version']}", "", f"Used by: {', '.join(con['used_by'])}."]
        if con["text"] is not None:
            out += [f"Source `{con['source']}`; content sha256 `{con['sha256']}` (its first 12 hex digits are the version suffix), file sha256 `{con['file_sha256']}`.", ""]
            out += _block("yaml", con["text"]) + [""]
        else:
            out += [f"{con['note']}.", ""]
    out += ["### Resolved configs", ""]
    for name, cfg in prov["resolved_configs"].items():
        out += _details(f"configs/{name}.json", "json", json.dumps(cfg, indent=2, sort_keys=True))
    out += ["### Stage manifests", ""]
    for s, m in stages.items():
        out += _details(f"{s}/_manifest.json (without shard keys)", "json", json.dumps(m, indent=2, sort_keys=True, default=str))
    return "\n".join(out) + "\n"
