"""Render agreement results: report.html (self-contained, plots embedded), report.md and metrics.json."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from .agreement import DEFINITIONS


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(results: list[dict], ceiling: dict | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    names = [r["judge"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    acc = [r["agreement"] for r in results]
    err = [[a - r["agreement_ci95"][0] for a, r in zip(acc, results)], [r["agreement_ci95"][1] - a for a, r in zip(acc, results)]]
    bars = ax.bar(names, acc, yerr=err, capsize=4, color="#4C72B0")
    for bar, a in zip(bars, acc):  # the value at the bar's foot: a 0% bar is otherwise invisible
        ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"{a:.1%}", ha="center", va="bottom", fontweight="bold", color="white" if a > 0.1 else "black")
    ax.axhline(0.5, color="grey", ls=":", label="chance (2-way)")
    if ceiling:
        ax.axhline(ceiling["pairwise_agreement"], color="#C44E52", ls="--", label="human-human")
    ax.set_ylim(0, 1)
    ax.set_ylabel("agreement with humans")
    ax.legend(fontsize=8)
    ax.set_title("Agreement with the human majority (95% CI)")
    out["agreement"] = _png(fig)

    with_probs = [r for r in results if "reliability" in r]
    if with_probs:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0.5, 1], [0.5, 1], color="grey", ls=":")
        for r in with_probs:
            for key, style in (("reliability", "-o"), ("reliability_after", "--x")):
                bins = [b for b in r.get(key, []) if b["n"]]
                if bins:
                    ax.plot([b["conf"] for b in bins], [b["acc"] for b in bins], style, label=f"{r['judge']} ({'after T' if key.endswith('after') else 'raw'})")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title("Reliability diagram")
        ax.legend(fontsize=7)
        out["reliability"] = _png(fig)

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for r in with_probs:
            ax.plot([c["coverage"] for c in r["coverage"]], [c["agreement"] for c in r["coverage"]], "-o", label=r["judge"])
        ax.set_xlabel("fraction labelled (most confident first)")
        ax.set_ylabel("agreement")
        ax.set_ylim(0, 1)
        ax.set_title("Coverage curve")
        ax.legend(fontsize=8)
        out["coverage"] = _png(fig)

    with_pos = [r for r in results if r.get("position", {}).get("n_both_orders")]
    if with_pos:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        keys = ["consistency", "same_position_preferred", "first_position_preference"]
        width = 0.8 / len(with_pos)
        for k, r in enumerate(with_pos):
            ax.bar([i + k * width for i in range(len(keys))], [r["position"][x] for x in keys], width, label=r["judge"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], ["consistency", "same position\npreferred", "first position\npreference"], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("Position bias")
        ax.legend(fontsize=8)
        out["position"] = _png(fig)
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def summary_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        pos = r.get("position", {})
        ts = r.get("temperature_scaling", {})
        rows.append(
            [
                r["judge"],
                str(r["n_decided"]),
                f"{r['agreement']:.1%}",
                f"[{r['agreement_ci95'][0]:.1%}, {r['agreement_ci95'][1]:.1%}]",
                _fmt(r["kappa"]),
                f"{pos['consistency']:.1%}" if pos.get("n_both_orders") else "–",
                f"{pos['first_position_preference']:.1%}" if pos.get("n_both_orders") else "–",
                _fmt(r.get("prefers_longer_ai")),
                _fmt(r.get("ece")),
                _fmt(ts.get("ece_after")),
                _fmt(ts.get("temperature")),
            ]
        )
    return rows


HEADER = ["judge", "n", "agreement", "95% CI", "Cohen's κ", "consistency", "first-position pref.", "prefers longer", "ECE", "ECE after T", "T"]


def write_report(out_dir: Path, title: str, results: list[dict], ceiling: dict | None, meta: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    imgs = plots(results, ceiling)
    metrics = {"title": title, "meta": meta, "human_ceiling": ceiling, "judges": results, "definitions": DEFINITIONS}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    for r in results:
        if r.get("temperature_scaling"):
            (out_dir / f"temperature-{r['judge']}.json").write_text(json.dumps({"judge": r["judge"], "temperature": r["temperature_scaling"]["temperature"], "apply_with": f"aifeedback label --set temperature={r['temperature_scaling']['temperature']:.4f}"}, indent=2))
    rows = summary_rows(results)
    # markdown
    md = [f"# {title}", "", f"Human labels: {meta.get('human')}", ""]
    if ceiling:
        md += [f"Human ceiling (pairwise annotator agreement, {ceiling['n_items']} items): **{ceiling['pairwise_agreement']:.1%}**", ""]
    md += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Joins", ""]
    for r in results:
        j = r["join"]
        md.append(f"- {r['judge']}: {j['joined']} joined of {j['judge_items']} judge items and {j['human_items']} human items ({j['judge_only']} judge-only, {j['human_only']} human-only); {r['n_human_ties_excluded']} human ties excluded. {r['description']}")
    for r in results:
        if r.get("by_category"):
            md += ["", f"## Agreement by category: {r['judge']}", "", "| category | n | agreement |", "|---|---|---|"]
            md += [f"| {c} | {v['n']} | {v['agreement']:.1%} |" for c, v in r["by_category"].items()]
    md += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    # html
    esc = html.escape
    table = "<table id='summary'><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr></thead><tbody>"
    for r in rows:
        table += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
    table += "</tbody></table>"
    figs = "<div class='figs'>" + "".join(f"<figure><img alt='{k} plot' id='plot-{k}' src='data:image/png;base64,{v}'/></figure>" for k, v in imgs.items()) + "</div>"
    joins = "".join(f"<li>{esc(r['judge'])}: {r['join']['joined']} joined ({r['join']['judge_only']} judge-only, {r['join']['human_only']} human-only); {r['n_human_ties_excluded']} human ties excluded. {esc(r['description'])}</li>" for r in results)
    cats = ""
    for r in results:
        if r.get("by_category"):
            cats += f"<h3>By category: {esc(r['judge'])}</h3><table><tr><th>category</th><th>n</th><th>agreement</th></tr>" + "".join(f"<tr><td>{esc(c)}</td><td>{v['n']}</td><td>{v['agreement']:.1%}</td></tr>" for c, v in r["by_category"].items()) + "</table>"
    defs = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS.items())
    ceil = f"<p id='ceiling'>Human ceiling (pairwise annotator agreement, {ceiling['n_items']} items): <b>{ceiling['pairwise_agreement']:.1%}</b></p>" if ceiling else ""
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td{{white-space:nowrap}}td:first-child{{text-align:left}}th{{background:#f3f3f3}}.figs{{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:8px;align-items:start}}figure{{margin:0}}figure img{{max-width:100%;height:auto}}dt{{font-weight:bold;margin-top:6px}}</style></head>
<body><h1>{esc(title)}</h1><p>Human labels: {esc(str(meta.get('human')))}</p>{ceil}{table}{figs}<h2>Joins</h2><ul>{joins}</ul>{cats}<h2>Definitions</h2><dl>{defs}</dl>
<script>
function check(){{const imgs=[...document.images];if(imgs.every(i=>i.complete)){{document.body.setAttribute('data-images-loaded',String(imgs.every(i=>i.naturalWidth>0)));}}else{{setTimeout(check,50);}}}}
window.addEventListener('load',check);
</script></body></html>"""
    (out_dir / "report.html").write_text(page)
    return {"html": out_dir / "report.html", "md": out_dir / "report.md", "json": out_dir / "metrics.json"}
