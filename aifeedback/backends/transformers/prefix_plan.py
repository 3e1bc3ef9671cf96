"""Which tokens a batch of scoring prompts shares, and how the prompts are grouped and cut into forward passes.

Pure planning over lists of token ids: no torch, so it is tested without it (tests/test_prefix_plan.py).
The scoring strategies (:mod:`.scoring`, :mod:`.varlen`) compute what these plans name:

* the *global prefix*: the tokens every prompt of the call starts with (preamble, few-shot exemplars);
* *groups*: runs of consecutive prompts that share a longer prefix (the two orders of a pair share its context);
* *packs* (varlen) and *chunks* (batched): how groups or prompts are cut into forward passes.
"""

from __future__ import annotations

MIN_GROUP_GAIN = 8  # a group level is used only when it shares this many more tokens


def lcp(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_plan(seqs: list[list[int]]) -> tuple[int, list[tuple[int, int, int]]]:
    """(global prefix length, [(start, end, group prefix length)]) for a batch of token lists."""
    shortest = min(len(s) for s in seqs)
    p0 = min(shortest - 1, min(lcp(seqs[0], s) for s in seqs))
    groups: list[tuple[int, int, int]] = []
    i = 0
    while i < len(seqs):
        j = i + 1
        lg = len(seqs[i]) - 1
        while j < len(seqs):
            cand = min(lg, lcp(seqs[i], seqs[j]), len(seqs[j]) - 1)
            if cand < p0 + MIN_GROUP_GAIN:
                break
            lg = cand
            j += 1
        if j == i + 1:
            lg = p0  # a lone prompt: nothing to share beyond the global prefix
        groups.append((i, j, max(lg, p0)))
        i = j
    return p0, groups


def packs(groups: list[tuple[int, int, int]], seqs: list[list[int]], p0: int, limit: int) -> list[list[tuple[int, int, int]]]:
    """Cut consecutive groups into packs of at most ``limit`` tokens past the shared prefix (a larger group is a pack of its own)."""
    out, cur, size = [], [], 0
    for g in groups:
        a, b, lg = g
        n = (lg - p0) + sum(len(seqs[r]) - lg for r in range(a, b))
        if cur and size + n > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += n
    if cur:
        out.append(cur)
    return out


def score_chunks(seqs: list[list[int]], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Cut prompts into forward batches (the batched strategy): keep runs that share a prefix together, sort runs
    by length (little padding), and cap both rows and padded tokens per batch."""
    n = len(seqs)
    glob = min(lcp(seqs[0], s) for s in seqs)
    units, start = [], 0
    for i in range(1, n + 1):
        if i == n or lcp(seqs[start], seqs[i]) < glob + MIN_GROUP_GAIN:
            units.append(list(range(start, i)))
            start = i
    units.sort(key=lambda u: max(len(seqs[i]) for i in u))
    chunks, cur, width = [], [], 0
    for u in units:
        w = max(width, max(len(seqs[i]) for i in u))
        if cur and (len(cur) + len(u) > max_rows or (len(cur) + len(u)) * w > max_tokens):
            chunks.append(cur)
            cur, w = [], max(len(seqs[i]) for i in u)
        cur.extend(u)
        width = w
    if cur:
        chunks.append(cur)
    return chunks
