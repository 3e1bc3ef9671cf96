"""The loop's report: per iteration, each evaluator's win rate (with CI) and length-controlled win rate, the evaluators'
agreement, length and KL; each evaluator's training data and out-of-domain accuracy beside it. HTML + JSON.

Several runs (e.g. the RM-labelled loop and the LLM-labelled control) go side by side in one report.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .evaluators import agreement_matrix, describe
from .rundir import STAGES, iter_dir, saved_config, stage_done

WIN_KEYS = ("n", "n_prompts", "win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci", "mean_reward_new", "mean_reward_initial")


def eval_entries(e: dict | None) -> list[dict]:
    """An eval marker's per-evaluator figures; a marker from before several evaluators holds one, named by its folder."""
    if not e:
        return []
    if "evaluators" in e:
        return e["evaluators"]
    path = e.get("evaluator")
    return [{"name": Path(path).name if path else "evaluator", "path": path, "independent": None, **{k: e.get(k) for k in WIN_KEYS}}]


def collect(run: str | Path) -> dict:
    run = Path(run)
    cfg = saved_config(run)
    its = []
    k = 1
    while iter_dir(run, k).is_dir():
        stages = {s: stage_done(run, k, s) for s in STAGES}
        it = {"iteration": k, **{s: v for s, v in stages.items()}, "seconds": {s: (v or {}).get("seconds") for s, v in stages.items()}}
        if stages["eval"]:
            it["agreement_matrix"] = agreement_matrix([v["name"] for v in eval_entries(stages["eval"])], stages["eval"].get("agreement", []))
        its.append(it)
        k += 1
    folders: dict[str, str | None] = {}  # every evaluator of an iteration, in order: name -> folder
    for it in its:
        for v in eval_entries(it["eval"]):
            folders[v["name"]] = v.get("path")
    evaluators = {name: describe(path) if path else {"path": None, "card": None, "card_error": "folder not recorded", "training_data": None, "training_data_source": None, "sets": []} for name, path in folders.items()}
    base = json.loads((run / "baseline" / "info.json").read_text()) if (run / "baseline" / "info.json").is_file() else None
    temp = json.loads((run / "labeler_temperature.json").read_text()) if (run / "labeler_temperature.json").is_file() else None
    return {"run_dir": str(run), "config": cfg, "baseline": base, "labeler_temperature": temp, "evaluators": evaluators, "iterations": its}


def _svg(series: dict[str, list[tuple[int, float, float | None, float | None]]], title: str, y_label: str, ref: float | None = None) -> str:
    """A small line chart: series name -> [(iteration, value, ci_lo, ci_hi)]."""
    W, H, L, B = 420, 240, 50, 30
    pts = [p for s in series.values() for p in s]
    if not pts:
        return f"<p>{html.escape(title)}: no finished iteration yet</p>"
    xs = [p[0] for p in pts] + [0]
    ys = [v for p in pts for v in (p[1], p[2], p[3]) if v is not None] + ([ref] if ref is not None else [])
    x0, x1 = min(xs), max(max(xs), 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.1
    y0, y1 = y0 - pad, y1 + pad

    def X(x):
        return L + (x - x0) / (x1 - x0) * (W - L - 10)

    def Y(y):
        return H - B - (y - y0) / (y1 - y0) * (H - B - 20)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    out = [f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg"><text x="{W / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - 10}" y2="{H - B}" stroke="#999"/><line x1="{L}" y1="20" x2="{L}" y2="{H - B}" stroke="#999"/>')
    for t in range(x0, x1 + 1):
        out.append(f'<text x="{X(t):.1f}" y="{H - B + 14}" font-size="10" text-anchor="middle">{t}</text>')
    for f in (0, 0.5, 1):
        v = y0 + f * (y1 - y0)
        out.append(f'<text x="{L - 4}" y="{Y(v) + 3:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 2}" font-size="10" text-anchor="middle">iteration</text><text x="10" y="{H / 2}" font-size="10" transform="rotate(-90 10 {H / 2})" text-anchor="middle">{html.escape(y_label)}</text>')
    if ref is not None:
        out.append(f'<line x1="{L}" y1="{Y(ref):.1f}" x2="{W - 10}" y2="{Y(ref):.1f}" stroke="#aaa" stroke-dasharray="4 3"/>')
    for i, (name, s) in enumerate(series.items()):
        c = colors[i % len(colors)]
        s = sorted(s)
        points = " ".join(f"{X(p[0]):.1f},{Y(p[1]):.1f}" for p in s)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{points}"/>')
        for p in s:
            out.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[1]):.1f}" r="3" fill="{c}"/>')
            if p[2] is not None and p[3] is not None:
                out.append(f'<line x1="{X(p[0]):.1f}" y1="{Y(p[2]):.1f}" x2="{X(p[0]):.1f}" y2="{Y(p[3]):.1f}" stroke="{c}"/>')
        out.append(f'<text x="{L + 8}" y="{32 + 13 * i}" font-size="11" fill="{c}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _trainer_settings(cfg: dict) -> str:
    if cfg.get("method") == "grpo":
        g = cfg.get("grpo", {})
        return f"kl_beta {g.get('kl_beta')}, lr {g.get('lr')}, {g.get('max_steps')} steps"
    d = cfg.get("dpo", {})
    return f"beta {d.get('beta')}, lr {d.get('lr')}, {d.get('epochs')} epochs"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _sets(sets: list[dict], in_domain: bool) -> str:
    """One evaluator's accuracy on its human-labelled sets of one kind, against prefer-the-longer on the same pairs."""
    mine = [x for x in sets if x["in_domain"] == in_domain]
    if not mine:
        return "not recorded"
    return "<br>".join(f"{html.escape(x['set'])}: {_pct(x['accuracy'])}" + ("" if x.get("prefer_longer") is None else f" (prefer-longer {_pct(x['prefer_longer'])}{_diff(x.get('vs_prefer_longer_ci'))})") + f", n={x['n']}" for x in mine)


def _diff(ci: list[float] | None) -> str:
    """The paired 95% CI of accuracy minus prefer-longer, in points."""
    return "" if ci is None else f"; difference [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] points"


def _evaluator_rows(d: dict) -> list[str]:
    indep = {}
    for it in d["iterations"]:
        for v in eval_entries(it.get("eval")):
            indep[v["name"]] = v.get("independent")
    out = ["<table><tr><th>evaluator</th><th>folder</th><th>independent of the labeler</th><th>training data</th><th>out-of-domain accuracy (human labels)</th><th>in-domain accuracy (human labels)</th></tr>"]
    for name, info in d["evaluators"].items():
        ind = indep.get(name)
        train = "not recorded" if info["training_data"] is None else html.escape(info["training_data"]) + ("" if info["training_data_source"] == "evaluation.json" else f" <small>({html.escape(info['training_data_source'])})</small>")
        if info.get("card_error"):
            train += f" <small>(evaluator card: {html.escape(info['card_error'])})</small>"
        cells = (html.escape(name), f"<code>{html.escape(str(info['path']))}</code>", "not recorded" if ind is None else ("yes" if ind else "<b>no: the labeler's own reward model</b>"), train, _sets(info["sets"], False), _sets(info["sets"], True))
        out.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return out


def write_report(runs: dict[str, str | Path], out_dir: str | Path) -> dict:
    """report.json and report.html in out_dir for one or more loop runs (name -> run dir)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {name: collect(path) for name, path in runs.items()}
    win, lc, length, kl = {}, {}, {}, {}
    for name, d in data.items():
        ev = [(it["iteration"], it["eval"]) for it in d["iterations"] if it.get("eval")]
        several = len(d["evaluators"]) > 1
        for k, e in ev:
            for v in eval_entries(e):
                series = f"{name} / {v['name']}" if several else name
                win.setdefault(series, []).append((k, v["win_rate"], *v["win_rate_ci"]))
                lc.setdefault(series, []).append((k, v["lc_win_rate"], *v["lc_win_rate_ci"]))
        length[name] = [(0, ev[0][1]["mean_tokens_initial"], None, None)] + [(k, e["mean_tokens_new"], None, None) for k, e in ev] if ev else []
        kl[name] = [(k, e["kl_to_initial"], None, None) for k, e in ev]
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>aifeedback loop report</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}</style></head><body>"]
    parts.append(
        "<h1>Iterative RLAIF: the policy against its initial self</h1><p>Win rate: an evaluator reward model prefers the new policy's response to the initial policy's (same held-out prompt and sample index; ties count 1/2), 95% bootstrap CI over prompts; "
        "every evaluator scores the same samples. Length-controlled: the fitted win rate at equal length. Agreement: the share of (new, initial) pairs on which two evaluators pick the same winner, over the pairs that neither scores equal "
        "(those are left out and counted); chance is the agreement two independent evaluators with these win rates would reach. "
        "Each evaluator's training data and accuracy on human-labelled sets (its evaluator card, evaluation.json in its folder) say how far its taste holds out of its domain. "
        "KL: mean over held-out samples of log pi_new - log pi_initial at the sampling temperature.</p>"
    )
    parts.append("<div>" + _svg(win, "win rate vs initial policy", "win rate", 0.5) + _svg(lc, "length-controlled win rate", "LC win rate", 0.5) + _svg(length, "mean response length (tokens)", "tokens") + _svg(kl, "KL to the initial policy", "nats") + "</div>")
    for name, d in data.items():
        cfg = d["config"]
        parts.append(f"<h2>{html.escape(name)}</h2><p>run <code>{html.escape(d['run_dir'])}</code>; labeler <code>{html.escape(str(cfg.get('labeler')))}</code>" + (f" (LLM: {html.escape(str(cfg.get('label', {}).get('backend', {}).get('model')))})" if cfg.get("labeler") == "llm" else "") + f"; evaluators {html.escape(', '.join(d['evaluators']) or 'none yet')}; method {cfg.get('method')}, {_trainer_settings(cfg)}, {cfg.get('n_train_prompts')} train prompts x {cfg.get('n_responses')} responses (DPO on {html.escape(str(cfg.get('dpo_pairs', 'all')))} pairs), {cfg.get('n_eval_prompts')} held-out prompts x {cfg.get('eval_samples')} samples, max {cfg.get('max_new_tokens')} new tokens.</p>")
        if d.get("labeler_temperature"):
            t = d["labeler_temperature"]
            parts.append(f"<p>Labeler temperature T = {t['temperature']:.3f} fitted on {t['n_gold']} gold pairs (gold accuracy {_pct(t.get('gold_accuracy'))}).</p>")
        parts += ["<h3>Evaluators</h3>", *_evaluator_rows(d)]
        parts.append("<h3>Win rate by evaluator</h3><table><tr><th>iteration</th><th>evaluator</th><th>win rate</th><th>95% CI</th><th>LC win rate</th><th>95% CI</th><th>pairs</th></tr>")
        for it in d["iterations"]:
            for v in eval_entries(it.get("eval")):
                cells = (it["iteration"], html.escape(v["name"]), _pct(v.get("win_rate")), " - ".join(_pct(x) for x in v.get("win_rate_ci") or []), _pct(v.get("lc_win_rate")), " - ".join(_pct(x) for x in v.get("lc_win_rate_ci") or []), v.get("n", ""))
                parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        agree = [(it["iteration"], a) for it in d["iterations"] for a in (it.get("eval") or {}).get("agreement", [])]
        if agree:
            parts.append("<h3>Agreement between evaluators</h3><table><tr><th>iteration</th><th>evaluators</th><th>same winner</th><th>chance</th><th>pairs compared</th><th>pairs left out (a tie)</th></tr>")
            for k, a in agree:
                parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in (k, f"{html.escape(a['a'])} / {html.escape(a['b'])}", _pct(a["agreement"]), _pct(a["chance"]), a["n"], a["n_tied"])) + "</tr>")
            parts.append("</table>")
        parts.append("<h3>Iterations</h3><table><tr><th>iteration</th><th>tokens new / initial</th><th>KL</th><th>pairs labelled</th><th>labeler prefers longer</th><th>DPO pairs</th><th>s sample</th><th>s label</th><th>s train</th><th>s eval</th></tr>")
        for it in d["iterations"]:
            e, lab, tr = it.get("eval") or {}, it.get("label") or {}, it.get("train") or {}
            sec = it["seconds"]
            parts.append(
                "<tr>" + "".join(f"<td>{c}</td>" for c in (
                    it["iteration"], f"{e['mean_tokens_new']:.1f} / {e['mean_tokens_initial']:.1f}" if e else "", f"{e['kl_to_initial']:.3f}" if e else "", lab.get("n_labelled", ""), _pct(lab.get("labeler_prefers_longer")), tr.get("n_pairs", tr.get("steps", "")),
                    *[("" if sec.get(s) is None else f"{sec[s]:.0f}") for s in STAGES])) + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    (out_dir / "report.html").write_text("\n".join(parts))
    return data
