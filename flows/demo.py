"""The demo on the embedded default models: one Prefect flow with the stages as subflows, then what it shows.

generate -> critique/revise -> label both orders on a few prompts; the same labeler
on the shipped human gold slice (data/gold/pandalm), measured against the human
labels beside GPT-3.5's shipped verdicts; an export of the run; a viewer page.
:func:`show` prints it all as a user should see it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .agreement import run_agreement
from .export import export_run
from .generate import REPO, run_generate
from .label import run_label
from .revise import run_revise

GOLD = REPO / "data" / "gold" / "pandalm"
GOLD_ITEMS = GOLD / "testset-slice.json"
GOLD_VERDICTS = GOLD / "gpt-3.5-turbo-slice.json"
LABELER_NAME = "smollm2-135m"  # the embedded labeler, run here
STRONG_NAME = "gpt-3.5-turbo"  # PandaLM's shipped verdicts on the same items


def gold_pairs(dest: Path) -> Path:
    """The gold slice as a pairs file for `label --input` (pair ids as in the human file, so they join)."""
    from labelers.human_data import load_human

    items = load_human("pandalm", GOLD_ITEMS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"pair_id": it["pair_id"], "prompt": it["messages"], "response_a": it["response_a"], "response_b": it["response_b"]}, ensure_ascii=False) + "\n")
    return dest


def run_demo(run_dir: str = "runs/demo", n_prompts: int = 4) -> dict:
    """generate -> critique/revise -> label both orders -> agreement on the gold slice -> export -> viewer. Returns where each output is."""
    from labelers.viewer import write_viewer

    root = Path(run_dir).resolve()
    gen = run_generate(
        run_dir=str(root),
        overrides={"limit": n_prompts, "sampling": {"n": 2, "max_new_tokens": 40, "temperature": 0.8}, "batch_size": 16},
    )
    rev = run_revise(run_dir=str(root), overrides={"rounds": 1, "sampling": {"max_new_tokens": 40}, "batch_size": 16})
    lab = run_label(run_dir=str(root), overrides={"batch_size": 64})
    gold_run = root / "gold"
    gold_lab = run_label(run_dir=str(gold_run), overrides={"input": str(gold_pairs(gold_run / "pairs.jsonl")), "batch_size": 64})
    agr = run_agreement(
        human=str(GOLD_ITEMS),
        human_format="pandalm",
        runs=[f"{LABELER_NAME}={gold_run}"],
        judges=[f"{STRONG_NAME}={GOLD_VERDICTS}"],
        out_dir=str(gold_run / "agreement"),
        title=f"Judges vs human labels on {gold_lab['n_in']} PandaLM pairs",
    )
    exp = export_run(str(root), report=str(gold_run / "agreement"))
    view, _ = write_viewer(root)
    gold_view, _ = write_viewer(gold_run)
    return {
        "run directory": str(root),
        "responses": f"{root / 'responses'} ({gen['n_out']} rows, {gen['n_excluded']} excluded)",
        "revision chains": f"{root / 'revisions'} ({rev['n_out']} rows, {rev.get('n_degenerate', 0)} flagged degenerate, {rev['n_excluded']} excluded)",
        "AI labels, both orders": f"{root / 'labels'} ({lab['n_out']} labelled, {lab['n_excluded']} excluded)",
        "gold slice labels": f"{gold_run / 'labels'} ({gold_lab['n_out']} labelled, {gold_lab['n_excluded']} excluded)",
        "agreement report": agr["html"],
        "export": exp["to_dir"],
        "viewer": str(view),
        "viewer, gold slice": str(gold_view),
    }


def _cut(text: str | None, n: int) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def show(out: dict, console, n_pairs: int = 4) -> None:
    """Print the demo's data: a few labelled pairs, the agreement table, the export loaded back, how to plug in a real judge."""
    from rich.markup import escape
    from rich.table import Table

    from aifeedback.store import RunStore
    from labelers.report import HEADER, summary_rows

    root = Path(out["run directory"])
    rows = RunStore(root, probe=False).read_table("labels").to_pylist()[:n_pairs]
    t = Table(title=f"A few labelled pairs ({root / 'labels'})", show_lines=True)
    for col, kw in (("prompt", {"ratio": 2}), ("response A", {"ratio": 3}), ("response B", {"ratio": 3}), ("p(A≻B)\nA first", {"justify": "right"}), ("p(A≻B)\nA second", {"justify": "right"}), ("soft\nlabel", {"justify": "right"}), ("consistent", {})):
        t.add_column(col, **kw)
    for r in rows:
        user = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
        t.add_row(escape(_cut(user, 50)), escape(_cut(r["response_a"], 70)), escape(_cut(r["response_b"], 70)), f"{r['p_ab']:.3f}", f"{r['p_ba']:.3f}", f"{r['p_a']:.3f}", "yes" if r["consistent"] else f"no: {r['position_preferred']}\nshown won")
    console.print(t)
    console.print("p(A≻B) A first / A second: the labeler's P(A is better) with A shown first / second. Soft label: their mean; within 0.05 of 0.5 it is a tie.")

    metrics = json.loads((Path(out["agreement report"]).parent / "metrics.json").read_text())
    keep = ["judge", "n", "agreement", "95% CI", "Cohen's κ", "consistency", "first-position pref."]
    t = Table(*keep, title=metrics["title"])
    for r in summary_rows(metrics["judges"]):
        t.add_row(*(escape(r[HEADER.index(k)]) for k in keep))
    console.print(t)
    ceiling = metrics.get("human_ceiling")
    if ceiling:
        console.print(f"Human ceiling: the three annotators agree with each other {ceiling['pairwise_agreement']:.1%} of the time.")
    for j in metrics["judges"]:
        if j.get("judge_tie_rate"):
            console.print(f"{j['judge']}: {j['judge_tie_rate']:.0%} of its verdicts are ties, and a tie counts as a miss.")
    console.print(f"Report with plots: {out['agreement report']}")

    import datasets

    datasets.disable_progress_bars()
    exp = Path(out["export"])
    prov = json.loads((exp / "provenance.json").read_text())
    console.print(f"Export: {exp}")
    t = Table("config", "split", "rows", title="loaded back with datasets.load_dataset(export, config)")
    for name in prov["rows"]:
        for split, d in datasets.load_dataset(str(exp), name).items():
            t.add_row(name, split, str(d.num_rows))
    console.print(t)
    for name, c in prov["counts"].items():
        if name == "preferences" and not c.get("exported"):
            console.print(f"preferences: {c['label_rows']} labelled pairs, {c['ties']} of them ties within the tie margin, so no preference rows; the agreement table says why (a small labeler that picks the first-shown response).")
    console.print(f"Browse every pair and revision chain: {out['viewer']}; the gold slice with its human labels: {out['viewer, gold slice']}. `aifeedback view RUN_DIR` writes one for any run.", soft_wrap=True)
    console.print(
        "Plug in a real judge: [bold]aifeedback label --run-dir runs/x --input pairs.jsonl --backend openai --base-url http://HOST:PORT/v1 --model NAME[/] "
        "(any OpenAI-compatible server; the key comes from $OPENAI_API_KEY).",
        soft_wrap=True,
    )
