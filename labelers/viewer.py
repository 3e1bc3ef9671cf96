"""``aifeedback view``: one self-contained HTML page of a run's labelled pairs and revision chains.

The page opens from disk with no server and no network: its CSS, its script and
the run's data are inline, and every text from the run is put on the page with
``textContent`` (never parsed as HTML). The data is read through the run store,
so p(A≻B) per order, the soft label, the hard label, consistency and confidence
are those of ``aifeedback/preference.py``, with the run's tie margin.

Per-item human labels come from an agreement report (``human_labels.json``,
written by ``aifeedback agreement``) when one is found: ``--report DIR``, or a
report in the run directory or one folder below it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path

from aifeedback.errors import InputError

STAGE_DIRS = ("responses", "revisions", "labels")
_TOKEN = re.compile(r"\s+|[^\s]+")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def word_diff(old: str, new: str) -> list[list[str]]:
    """``[[op, text], ...]`` with op "=" (kept), "-" (removed) or "+" (added), word by word."""
    a, b = _TOKEN.findall(old or ""), _TOKEN.findall(new or "")
    out: list[list[str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(["=", "".join(a[i1:i2])])
            continue
        if i2 > i1:
            out.append(["-", "".join(a[i1:i2])])
        if j2 > j1:
            out.append(["+", "".join(b[j1:j2])])
    return out


def _check_run(root: Path) -> None:
    if not root.exists():
        raise InputError(f"no run directory at {root}; pass a run made by `aifeedback generate`/`revise`/`label` (e.g. runs/demo after `aifeedback demo`)")
    if not root.is_dir():
        raise InputError(f"{root} is a file, not a run directory; pass the folder given as --run-dir to `aifeedback label`")
    if not any((root / s / "_manifest.json").is_file() for s in STAGE_DIRS):
        raise InputError(f"{root} is not a run directory (no responses/, revisions/ or labels/ with a _manifest.json); pass the folder given as --run-dir to `aifeedback label`")
    if not (root / "labels" / "_manifest.json").is_file():
        raise InputError(f"run {root} has no labels to view; run `aifeedback label --run-dir {root}` first")


def find_human_labels(root: Path, report: str | None) -> tuple[dict[str, str], str | None]:
    """{pair_id: "A"/"B"/"tie"} from an agreement report's human_labels.json, and where it came from."""
    if report:
        p = Path(report)
        path = p / "human_labels.json" if p.is_dir() else p.with_name("human_labels.json")
        if not path.is_file():
            raise InputError(f"no human_labels.json in the agreement report at {report}; write the report with `aifeedback agreement --out {report} ...`, or leave --report out")
        candidates = [path]
    else:
        candidates = sorted({*root.glob("human_labels.json"), *root.glob("*/human_labels.json")})
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in data["labels"].items()}, str(path)
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise InputError(f"{path} is not an agreement report's human_labels.json ({type(exc).__name__}: {exc}); write it again with `aifeedback agreement`") from None
    return {}, None


def _pair(r: dict, human: str | None) -> dict:
    p_a = _num(r["p_a"])
    disagreement = abs(p_a - (1.0 if human == "A" else 0.0)) if p_a is not None and human in ("A", "B") else None
    return {
        "id": r["pair_id"],
        "ctx": [[m["role"], m["content"]] for m in r["messages"] or []],
        "a": r["response_a"],
        "b": r["response_b"],
        "pab": _num(r["p_ab"]),
        "pba": _num(r["p_ba"]),
        "pa": p_a,
        "label": r["hard_label"],
        "conf": _num(r["confidence"]),
        "consistent": r["consistent"],
        "pos": r["position_preferred"],
        "sa": _num(r["score_a"]),
        "sb": _num(r["score_b"]),
        "flags": list(r["injection_flags"] or []),
        "mode": r["mode"],
        "principles": list(r["principle_ids"] or []),
        "rationale": r["rationale"],
        "human": human,
        "dis": disagreement,
    }


def kept_share(old: str, new: str) -> float:
    """Share of the two texts' words that the diff keeps (difflib's ratio over words): near 0 for a rewrite."""
    return difflib.SequenceMatcher(None, (old or "").split(), (new or "").split(), autojunk=False).ratio()


def _chain(r: dict) -> dict:
    rounds, prev = [], r["initial_response"]
    for x in sorted(r["rounds"] or [], key=lambda x: x["round"]):
        rounds.append({"n": x["round"], "principle": x["principle_id"], "critique": x["critique"], "revision": x["revision"], "diff": word_diff(prev, x["revision"]), "kept": round(kept_share(prev, x["revision"]), 3)})
        prev = x["revision"]
    return {
        "id": r["revision_id"],
        "ctx": [[m["role"], m["content"]] for m in r["messages"] or []],
        "initial": r["initial_response"],
        "final": r["final_revision"],
        "rounds": rounds,
        "revised": r["revised"],
        "degenerate": r["degenerate"],
        "why": r["degenerate_reason"],
        "constitution": f"{r['constitution_id']} {r['constitution_version']}",
    }


def _excluded(e: dict) -> dict:
    raw = e["raw"]
    cut = raw is not None and len(raw) > 2000
    return {"id": e["item_id"], "reason": e["reason"], "detail": e["detail"], "raw": (raw[:2000] + f" … [{len(raw) - 2000} more characters in the run store]") if cut else raw}


def collect(run_dir: str | Path, report: str | None = None) -> dict:
    """Everything the page shows, read through the run store (errors name the fix)."""
    from aifeedback.store import RunStore

    root = Path(run_dir).expanduser().resolve()
    _check_run(root)
    store = RunStore(root, probe=False)
    labels = store.read_table("labels").to_pylist()
    excluded = store.read_table("labels", excluded=True).to_pylist()
    humans, human_source = find_human_labels(root, report)
    manifest = store.manifest("labels")
    data: dict = {
        "run": root.name,
        "path": str(root),
        "counts": {"labels": store.counts("labels")},
        "pairs": [_pair(r, humans.get(r["pair_id"])) for r in labels],
        "excluded": [_excluded(e) for e in excluded],
        "chains": [],
        "chains_excluded": [],
        "human_source": human_source,
        "n_human": sum(1 for r in labels if r["pair_id"] in humans),
        "about": {
            "labeler": sorted({r["labeler_model"] for r in labels}),
            "template": sorted({r["template_version"] for r in labels}),
            "derive": manifest.get("derive"),
        },
    }
    if (root / "revisions" / "_manifest.json").is_file():
        data["counts"]["revisions"] = store.counts("revisions")
        data["chains"] = [_chain(r) for r in store.read_table("revisions").to_pylist()]
        data["chains_excluded"] = [_excluded(e) for e in store.read_table("revisions", excluded=True).to_pylist()]
    return data


def _json_for_script(data: dict) -> str:
    """JSON that cannot end its <script> element: <, > and & are written as \\u escapes."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict) -> str:
    from html import escape

    head, tail = (Path(__file__).with_name("templates") / "viewer.html").read_text(encoding="utf-8").split("__DATA__")
    return head.replace("__TITLE__", escape(f"aifeedback · {data['run']}")) + _json_for_script(data) + tail


def write_viewer(run_dir: str | Path, out: str | Path | None = None, report: str | None = None) -> tuple[Path, dict]:
    """Write the page (default RUN_DIR/view.html); returns its path and the data it holds."""
    data = collect(run_dir, report)
    dest = Path(out).expanduser().resolve() if out else Path(data["path"]) / "view.html"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render(data), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"could not write {dest} ({exc.strerror}); pass --out with a writable path") from None
    return dest, data
