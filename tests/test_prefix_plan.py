"""The prefix planner on small hand-made token lists: known answers, and no torch needed to run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aifeedback.backends.transformers.prefix_plan import MIN_GROUP_GAIN, lcp, packs, prefix_plan, score_chunks

P = [1, 2, 3]  # the call's shared prefix (preamble)
CA, CB = list(range(10, 20)), list(range(30, 40))  # two pairs' contexts, 10 tokens each (>= MIN_GROUP_GAIN)
SEQS = [
    P + CA + [100, 101],  # pair A, order AB: 15 tokens
    P + CA + [102],  # pair A, order BA: 14
    P + CB + [103, 104],  # pair B: 15
    P + CB + [105],  # 14
    P + [200, 201],  # a lone prompt: 5
]


def test_lcp():
    assert lcp([1, 2, 3], [1, 2, 4]) == 2
    assert lcp([1, 2], [1, 2, 3]) == 2
    assert lcp([], [1]) == 0
    assert lcp([5], [6]) == 0


def test_pairs_group_after_the_shared_prefix():
    # p0: the 3 tokens all share; each pair shares its context (up to token 13); the lone prompt only p0
    assert prefix_plan(SEQS) == (3, [(0, 2, 13), (2, 4, 13), (4, 5, 3)])


def test_a_group_needs_min_group_gain_more_tokens():
    lone = P + [99, 98]
    short = list(range(10, 10 + MIN_GROUP_GAIN - 1))  # one token short of the gain: no group level
    assert prefix_plan([P + short + [100], P + short + [101], lone]) == (3, [(0, 1, 3), (1, 2, 3), (2, 3, 3)])
    enough = list(range(10, 10 + MIN_GROUP_GAIN))
    assert prefix_plan([P + enough + [100], P + enough + [101], lone]) == (3, [(0, 2, 3 + MIN_GROUP_GAIN), (2, 3, 3)])


def test_every_prompt_keeps_its_last_token():
    """A prompt that is a prefix of another: the shared prefix stops one token short of the shorter one."""
    assert prefix_plan([[1, 2, 3], [1, 2, 3, 4]]) == (2, [(0, 1, 2), (1, 2, 2)])
    assert prefix_plan([[7, 8, 9]]) == (2, [(0, 1, 2)])


def test_packs_cut_at_the_token_limit():
    p0, groups = prefix_plan(SEQS)
    g0, g1, g2 = groups  # tokens past p0: 10 + 2 + 1 = 13, 13, and 2
    assert packs(groups, SEQS, p0, 26) == [[g0, g1], [g2]]  # 13 + 13 fits exactly
    assert packs(groups, SEQS, p0, 20) == [[g0], [g1, g2]]
    assert packs(groups, SEQS, p0, 5) == [[g0], [g1], [g2]]  # a group over the limit is a pack of its own
    assert packs(groups, SEQS, p0, 10_000) == [groups]


def test_score_chunks_keep_groups_together_sorted_by_length():
    # runs sharing the prefix: [0, 1], [2, 3], [4]; sorted by their longest prompt: [4] (5 tokens) first
    assert score_chunks(SEQS, 32, 12288) == [[4, 0, 1, 2, 3]]
    assert score_chunks(SEQS, 2, 12288) == [[4], [0, 1], [2, 3]]  # at most 2 rows: a run is never split
    assert score_chunks(SEQS, 32, 50) == [[4, 0, 1], [2, 3]]  # 3 rows x 15 = 45 padded tokens fit, 5 x 15 do not


def test_the_planner_imports_no_torch():
    code = "import sys, aifeedback.backends.transformers.prefix_plan; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
