"""How fast `aifeedback view`'s page loads on a 10,000-pair run, in headless Chromium. Goal: under 3 s.

The run is synthetic (this measures the page, not a labeler): 10,000 label rows in
the store's own schema with texts of realistic length (prompt about 40 words,
responses 60-160 words), 100 excluded pairs and 500 two-round revision chains,
written with RunStore, so the page is built by the same code as for a real run.

Measured, each the median of --repeats loads:
- build: reading the run and writing the page (Python);
- in-page: performance.now() when the first render is done, i.e. from navigation
  start through reading the file, parsing the HTML and the embedded JSON, and
  rendering the first page of rows (the page writes it into <body data-render-ms>);
  plain, and with a filter and a sort applied at load (#inconsistent=1&sort=conf-asc);
- wall: the whole `chromium --headless --dump-dom` process, and the same for an
  empty page, whose difference is the load as a user waits for it (browser start excluded).

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/viewer_load.py [--pairs 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GOAL_S = 3.0
WORDS = "the a of to and in that is for it with as was on be by this are or from at an which but not have has had were their can more other will about into than these its some would what when there only may also such very after most time people new way first two over use well because each data model answer question".split()
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def synthetic_run(root: Path, n_pairs: int, seed: int = 0) -> None:
    from aifeedback.records import LABEL_OUTPUTS, REVISIONS, exclusion
    from aifeedback.store import RunStore

    rng = random.Random(seed)
    store = RunStore(root)
    keys, shard, n_ex = [], 1000, 0
    for start in range(0, n_pairs, shard):
        rows = []
        for i in range(start, min(n_pairs, start + shard)):
            p_ab, p_ba = rng.random(), rng.random()
            rows.append(
                {
                    "pair_id": f"pair-{i}", "prompt_id": f"prompt-{i // 2}", "messages": [{"role": "user", "content": text(rng, 20, 60)}],
                    "response_a": text(rng, 60, 160), "response_b": text(rng, 60, 160), "mode": "pairwise-both",
                    "option_probs": [{"order": "AB", "principle_id": None, "probs": [p_ab, 1 - p_ab]}, {"order": "BA", "principle_id": None, "probs": [1 - p_ba, p_ba]}],
                    "candidates": ["1", "2"], "orders": ["AB", "BA"], "principle_ids": [], "prob_source": "logprobs", "retries": 0,
                    "injection_flags": ["A:verdict_claim"] if i % 97 == 0 else [], "truncated": False, "labeler_model": "synthetic", "backend": "none",
                    "template": "pairwise", "template_version": "pairwise@bench", "seed": 0, "config_hash": "bench", "item_key": f"k{i}",
                }
            )
        excluded = [exclusion(f"bad-{start + j}", "labels", "empty_response", "response_b is empty; there is nothing to compare") for j in range(10 if start < 10 * shard else 0)]
        key = f"{start:024x}"
        store.write_batch("labels", key, rows, LABEL_OUTPUTS, excluded)
        keys.append(key)
        n_ex += len(excluded)
    store.write_manifest("labels", keys, {"n_in": n_pairs + n_ex, "n_out": n_pairs, "n_excluded": n_ex, "derive": {"tie_margin": 0.05, "temperature": 1.0, "cot": False, "cot_clamp": None}})
    chains = []
    for i in range(500):
        initial = text(rng, 40, 90)
        r1 = initial.replace(" the ", " this ", 3) + " " + text(rng, 5, 15)
        r2 = r1.replace(" a ", " one ", 2)
        chains.append(
            {
                "revision_id": f"rev-{i}", "response_id": f"resp-{i}", "prompt_id": f"prompt-{i}", "messages": [{"role": "user", "content": text(rng, 10, 30)}],
                "initial_response": initial, "final_revision": r2, "rounds": [{"round": 1, "principle_id": "harmless-1", "critique": text(rng, 20, 40), "revision": r1, "seed": 0}, {"round": 2, "principle_id": "harmless-2", "critique": text(rng, 20, 40), "revision": r2, "seed": 0}],
                "revised": True, "degenerate": False, "degenerate_reason": None, "constitution_id": "harmless", "constitution_version": "1", "few_shot": False, "seed": 0,
                "model": "synthetic", "backend": "none", "prompt_truncated": False, "config_hash": "bench", "item_key": f"r{i}",
            }
        )
    store.write_batch("revisions", "f" * 24, chains, REVISIONS, [])
    store.write_manifest("revisions", ["f" * 24], {"n_in": 500, "n_out": 500, "n_excluded": 0})


def load(url: str, profile: Path) -> tuple[float, float | None]:
    """(wall seconds of the chromium process, the page's data-render-ms or None)."""
    t0 = time.perf_counter()
    dom = subprocess.run(["chromium", *CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
    wall = time.perf_counter() - t0
    m = re.search(r'data-render-ms="([\d.]+)"', dom)
    return wall, float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from labelers.viewer import write_viewer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_run(tmp / "run", args.pairs)
        t0 = time.perf_counter()
        page, data = write_viewer(tmp / "run")
        build = time.perf_counter() - t0
        size_mb = page.stat().st_size / 1e6
        empty = tmp / "empty.html"
        empty.write_text("<!doctype html><html><body>empty</body></html>")
        profile = tmp / "chrome"
        load(empty.as_uri(), profile)  # first start of the profile: not measured
        empty_wall = statistics.median(load(empty.as_uri(), profile)[0] for _ in range(args.repeats))
        plain = [load(page.as_uri(), profile) for _ in range(args.repeats)]
        filtered = [load(page.as_uri() + "#inconsistent=1&sort=conf-asc", profile) for _ in range(args.repeats)]
    if any(ms is None for _, ms in plain + filtered):
        sys.exit("the page did not render (no data-render-ms in the dumped DOM)")
    in_page = statistics.median(ms for _, ms in plain) / 1000
    in_page_f = statistics.median(ms for _, ms in filtered) / 1000
    wall = statistics.median(w for w, _ in plain)
    print(f"run: {len(data['pairs'])} labelled pairs, {len(data['excluded'])} excluded, {len(data['chains'])} revision chains")
    print(f"page: {size_mb:.1f} MB, built in {build:.2f} s")
    print(f"in-page load to first render: {in_page:.2f} s (median of {args.repeats}); with a filter and a sort at load: {in_page_f:.2f} s")
    print(f"chromium process: {wall:.2f} s for the page, {empty_wall:.2f} s for an empty page; difference {wall - empty_wall:.2f} s")
    worst = max(in_page, in_page_f, wall - empty_wall)
    print(f"goal < {GOAL_S:.0f} s: {'met' if worst < GOAL_S else 'NOT met'} (slowest of the three figures: {worst:.2f} s)")


if __name__ == "__main__":
    main()
