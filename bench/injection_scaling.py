"""Whether the injection flags (labelers/injection.py) take linear time on hostile texts.

Each adversarial text below is built at n and 2n characters and timed (median of
--repeats calls of injection_flags, in a child process killed after --cap seconds,
so a quadratic pattern reports "> cap" instead of hanging the bench). The ratio per
doubling is about 2 for a linear scan and about 4 for a quadratic one. tests/test_injection.py
runs the same texts at 200,000 characters under a timeout.

Usage: flock /tmp/aif-cpu.lock .venv/bin/python bench/injection_scaling.py [--n 100000,200000,400000] [--cap 60]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _repeat(unit: str, n: int, head: str = "", tail: str = "") -> str:
    """``head`` + ``unit`` repeated + ``tail``, exactly n characters."""
    body = n - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[:body] + tail


def _mix(n: int) -> str:
    """Fragments of every pattern, near-misses and whitespace runs, in a seeded random order."""
    rng = random.Random(0)
    parts = ["<", "</", "< /", "<response", "<response_", "the better", "better response is", "best answer =", "ignore", "ignore all of the",
             "to the", "dear", "\nrater", "\n system", "verdict", "final verdict", "preferred response", "answer with", "answer '1'", "answer 1 or"]
    out, size = [], 0
    while size < n:
        s = rng.choice(parts) + rng.choice([" ", "\n", "\t", " \n ", " " * rng.randint(1, 200), "\n" * rng.randint(1, 200)])
        out.append(s)
        size += len(s)
    return "".join(out)[:n]


# name -> text of n characters. Each targets a whitespace run a pattern can rescan or backtrack over, and
# holds a word a pattern needs (or a non-ASCII letter), so the keyword prefilter does not skip the regex.
ADVERSARIAL = {
    "newlines": lambda n: _repeat("\n", n, "", "answer"),  # ^\s* at every line start
    "spaces": lambda n: _repeat(" ", n, "", "answer"),
    "space-newline": lambda n: _repeat(" \n", n, "", "answer"),
    "unicode-space-newline": lambda n: _repeat("\u00a0\n\u2028", n, "\u0131"),  # non-ASCII: no prefilter
    "lt+spaces": lambda n: _repeat(" ", n, "<"),  # <\s*/?\s*: two runs over the same spaces
    "lt-slash+spaces": lambda n: _repeat(" ", n, "</", "x"),
    "lts+spaces": lambda n: _repeat("< ", n),
    "tag-prefixes": lambda n: _repeat("<respons", n),
    "ignore+spaces": lambda n: _repeat(" ", n, "ignore", "x"),
    "ignore-prefixes": lambda n: _repeat("ignore all of the your ", n),
    "verdict-prefixes": lambda n: _repeat("the better response is ", n),
    "verdict-a+spaces": lambda n: _repeat(" ", n, "the better answer is a", "x"),
    "verdict-a+newlines": lambda n: _repeat("\n", n, "the better answer is a", "x"),
    "judge-prefixes": lambda n: _repeat("dear to the raters ", n),
    "line-judge+spaces": lambda n: _repeat(" ", n, "\njudge", "x"),
    "system-lines": lambda n: _repeat("\n system", n),
    "answer-1+spaces": lambda n: _repeat(" ", n, "answer 1", "x"),
    "answer-1+newlines": lambda n: _repeat("\n", n, "answer 1"),
    "answer-prefixes": lambda n: _repeat("answer with '1' or ", n),
    "verdict-colon+spaces": lambda n: _repeat(" ", n, "final verdict:", "x"),
    "mix": _mix,
}


def time_one(name: str, n: int, repeats: int) -> float:
    from labelers.injection import injection_flags

    text = ADVERSARIAL[name](n)
    assert len(text) == n, (name, len(text), n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        injection_flags(text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(name: str, n: int, repeats: int, cap: float) -> float | None:
    """Seconds in a child process; None when it ran past ``cap``."""
    cmd = [sys.executable, __file__, "--one", name, str(n), "--repeats", str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, check=True, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000,200000,400000", help="comma-separated sizes; each is timed at n and 2n")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds before a single timing is given up")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated input names (default: all)")
    ap.add_argument("--one", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if args.one:
        print(time_one(args.one[0], int(args.one[1]), args.repeats))
        return
    sizes = [int(s) for s in args.n.split(",")]
    names = args.only.split(",") if args.only else list(ADVERSARIAL)
    print("| input | " + " | ".join(f"n={n:,}: t(n) s, t(2n) s, ratio" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    worst = 0.0
    for name in names:
        cells, capped = [], False
        for n in sizes:
            if capped:  # a larger size of an input that already ran past the cap is not tried
                cells.append("not tried")
                continue
            a = timed(name, n, args.repeats, args.cap)
            b = timed(name, 2 * n, args.repeats, args.cap) if a is not None else None
            if a is None or b is None:
                cells.append(f"{'> cap' if a is None else f'{a:.4f}'}, > cap ({args.cap:g} s), -")
                worst, capped = float("inf"), True
                continue
            ratio = b / a if a > 0 else float("nan")
            worst = max(worst, ratio)
            cells.append(f"{a:.4f}, {b:.4f}, {ratio:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"worst ratio per doubling: {worst:.2f} (about 2: linear, about 4: quadratic)")


if __name__ == "__main__":
    main()
