"""Scoring candidates after prompts: the grouped and batched strategies, and what every strategy shares.

Each strategy computes a :func:`.prefix_plan.prefix_plan`: the call's shared prefix once, each group's shared
part (a pair's context) once more, then every prompt's own suffix. Then the candidates' log-probs are read
after each prompt (:func:`final_pass`, :func:`combine_candidates`).

* ``grouped``: one group per forward pass after the shared prefix; no padding across pairs.
* ``batched``: many prompts padded into one pass, in chunks (:func:`.prefix_plan.score_chunks`); best on GPU.
* ``varlen`` (:mod:`.varlen`): many groups per pass with no padding; the CPU default.
* :func:`score_single`: one prompt, nothing shared (the reference the others are tested against).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .decoding import left_pad
from .prefix_plan import prefix_plan

if TYPE_CHECKING:
    import torch

    from .backend import TransformersBackend


def score_grouped(backend: TransformersBackend, seqs: list[list[int]], variants) -> list[list[float | None]]:
    """CPU strategy: the call's shared prefix once; then each group (a pair's orders) on its own,
    its shared part at batch 1 and its suffixes together. No padding across pairs, so no wasted FLOPs."""
    import torch

    dev = backend.device
    p0, groups = prefix_plan(seqs)
    if p0 == 0:
        return [score_single(backend, s, variants)[0] for s in seqs]

    fwd = backend.forward
    out: list[list[float | None]] = []
    with torch.inference_mode():
        cache, base = prefix_cache(backend, seqs[0][:p0])
        for a, b, lg in groups:
            for layer, (k, v) in zip(cache.layers, base):  # back to the shared prefix (update() never writes in place)
                layer.keys, layer.values = k, v
            if lg > p0:
                part = seqs[a][p0:lg]
                fwd(torch.tensor([part]), torch.ones((1, lg), dtype=torch.long), torch.arange(p0, lg)[None], cache)
            rows = b - a
            reindex_cache(cache, torch.zeros(rows, dtype=torch.long, device=dev))
            ids, sm = left_pad([seqs[r][lg:] for r in range(a, b)], backend.pad_id)
            mask = torch.cat([torch.ones((rows, lg), dtype=torch.long), sm], dim=1)
            pos = lg + (sm.cumsum(-1) - 1).clamp(min=0)
            out.extend(final_pass(backend, ids, mask, pos, cache, lg + sm.sum(-1, keepdim=True), variants))
    return out


def score_batched(backend: TransformersBackend, seqs: list[list[int]], variants: list[list[list[int]]]) -> list[list[float | None]]:
    """One chunk of prompts as a padded batch: the shared prefix once, each group's part once per group (padded
    to the longest), then every prompt's suffix (padded). Padding sits between the levels and is masked, with
    explicit position ids, so every row ends at the answer point."""
    import torch
    from transformers import DynamicCache

    dev = backend.device
    p0, groups = prefix_plan(seqs)
    if p0 == 0:  # nothing shared and nowhere safe to put padding: one prompt at a time
        out = []
        for s in seqs:
            out.extend(score_single(backend, s, variants))
        return out

    fwd = backend.forward
    pad = backend.pad_id

    with torch.inference_mode():
        # level 0: the prefix every prompt shares, once
        cache = DynamicCache()
        mask0 = torch.ones((1, p0), dtype=torch.long)
        fwd(torch.tensor([seqs[0][:p0]]), mask0, torch.arange(p0)[None], cache)
        # level 1: each group's own shared part, once per group
        G = len(groups)
        gparts = [seqs[a][p0:lg] for a, _, lg in groups]
        reindex_cache(cache, torch.zeros(G, dtype=torch.long, device=dev))
        mask = mask0.expand(G, -1)
        real = torch.full((G, 1), p0, dtype=torch.long)
        if any(gparts):
            gids, gm = left_pad(gparts, pad)
            gpos = real + (gm.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([mask, gm], dim=1)
            fwd(gids, mask, gpos, cache)
            real = real + gm.sum(-1, keepdim=True)
        # level 2: every prompt's suffix, with the group rows of the cache
        row_group = torch.tensor([g for g, (a, b, _) in enumerate(groups) for _ in range(a, b)], dtype=torch.long)
        reindex_cache(cache, row_group.to(dev))
        mask = mask[row_group]
        real = real[row_group]
        sparts = []
        for g, (a, b, lg) in enumerate(groups):
            sparts.extend(seqs[r][lg:] for r in range(a, b))
        sids, sm = left_pad(sparts, pad)
        spos = real + (sm.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([mask, sm], dim=1)
        return final_pass(backend, sids, mask, spos, cache, real + sm.sum(-1, keepdim=True), variants)


def score_single(backend: TransformersBackend, seq: list[int], variants) -> list[list[float | None]]:
    """One prompt alone, one full forward pass: ``[log-probs of the candidates]``."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    mask = torch.ones((1, len(seq)), dtype=torch.long)
    with torch.inference_mode():
        return final_pass(backend, torch.tensor([seq]), mask, torch.arange(len(seq))[None], cache, torch.tensor([[len(seq)]]), variants)


def prefix_cache(backend: TransformersBackend, ids: list[int]):
    """A cache holding one forward pass over ``ids`` (the call's shared prefix), and each layer's (keys, values)
    to reset it to between groups or packs, or to attend to."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    backend.forward(torch.tensor([ids]), torch.ones((1, len(ids)), dtype=torch.long), torch.arange(len(ids))[None], cache)
    return cache, [(layer.keys, layer.values) for layer in cache.layers]


def fold_token(variants) -> int | None:
    """The one token that starts every multi-token candidate spelling (" 1" = " " + "1"), if there is exactly one
    such prefix of length 1: it can ride along in the suffix pass instead of costing a pass of its own."""
    multi = {tuple(s[:d]) for v in variants for s in v if len(s) > 1 for d in range(1, len(s))}
    if len(multi) == 1:
        (pref,) = multi
        if len(pref) == 1:
            return pref[0]
    return None


def final_pass(backend: TransformersBackend, ids, mask, pos, cache, real, variants) -> list[list[float | None]]:
    """The last forward pass of the grouped, batched and single strategies, and each candidate's log-prob after it.

    ``mask`` covers the cache and ``ids``; ``real`` is each row's length after the pass. When the candidates'
    multi-token spellings share one first token (:func:`fold_token`), it rides at the end of this pass: causal
    attention leaves the logits at the prompt's last token as they were, and the appended position gives
    the candidates' second tokens, so no extension pass is needed. Otherwise one extension pass per
    distinct multi-token prefix follows (:func:`candidate_logprobs`).
    """
    import torch

    fold = fold_token(variants)
    if fold is None:
        first_lp = torch.log_softmax(backend.forward(ids, mask, pos, cache), dim=-1).cpu()
        return candidate_logprobs(backend, first_lp, variants, cache, mask, real, ids.shape[0])
    rows = ids.shape[0]
    backend.stats.tokens_prefilled += int(mask[:, -ids.shape[1] :].sum())  # the fold token is not prompt
    ids = torch.cat([ids, torch.full((rows, 1), fold, dtype=torch.long)], dim=1)
    mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
    pos = torch.cat([pos, real], dim=1)  # the fold token sits right after each row's last token
    lp = torch.log_softmax(backend.forward(ids, mask, pos, cache, count=False, keep=2), dim=-1).cpu()
    first_lp, after_fold = lp[:, 0], lp[:, 1]
    return combine_candidates(first_lp, variants, lambda pref: after_fold)


def candidate_logprobs(backend: TransformersBackend, first_lp, variants, cache, mask, real, B) -> list[list[float | None]]:
    """Log-prob of each candidate for B prompts whose rows are in ``cache`` (see :func:`combine_candidates`)."""
    import torch

    base_len = cache.get_seq_length()

    def extend(pref: tuple[int, ...]) -> torch.Tensor:
        ids = torch.tensor([list(pref)] * B, dtype=torch.long)
        m = torch.cat([mask, torch.ones((B, len(pref)), dtype=torch.long)], dim=1)
        pos = real + torch.arange(len(pref))[None]
        with torch.inference_mode():
            lp = torch.log_softmax(backend.forward(ids, m, pos, cache, count=False), dim=-1).cpu()
        crop_cache(cache, base_len)
        return lp

    return combine_candidates(first_lp, variants, extend)


def combine_candidates(first_lp, variants, extend) -> list[list[float | None]]:
    """Log-prob of each candidate: log-sum-exp over its spellings, minus the mass of longer candidates it prefixes.

    ``first_lp`` (B, vocab) are the next-token log-probs after each prompt; ``extend(prefix)`` returns them after
    each prompt followed by ``prefix`` (one extra pass per distinct multi-token prefix: " 1" -> " ", "10" -> "1").
    """
    import torch

    all_seqs = sorted({tuple(s) for v in variants for s in v})
    col = {s: i for i, s in enumerate(all_seqs)}
    seq_lp = first_lp[:, [s[0] for s in all_seqs]].clone()  # (B, n_seqs)
    multi = sorted({s[:d] for s in all_seqs if len(s) > 1 for d in range(1, len(s))}, key=len)
    for pref in multi:
        lp = extend(pref)
        for s in all_seqs:  # every longer spelling through this prefix gains its next token (" 10": " ", then "1", then "0")
            if len(s) > len(pref) and s[: len(pref)] == pref:
                seq_lp[:, col[s]] += lp[:, s[len(pref)]]
    probs = seq_lp.double().exp()
    B = first_lp.shape[0]
    cand_seqs = [[tuple(s) for s in v] for v in variants]
    out = torch.empty((B, len(cand_seqs)), dtype=torch.float64)
    for k, seqs in enumerate(cand_seqs):
        p = probs[:, [col[s] for s in seqs]].sum(-1)
        # subtract longer candidates that start with one of this candidate's spellings ("10" after "1")
        longer = sorted({t for j, other in enumerate(cand_seqs) if j != k for t in other for s in seqs if len(t) > len(s) and t[: len(s)] == s})
        p_ex = p - probs[:, [col[t] for t in longer]].sum(-1) if longer else p
        out[:, k] = torch.maximum(p_ex, torch.clamp(p * 1e-6, min=1e-30)).log()
    return out.tolist()


def crop_cache(cache, length: int) -> None:
    """Drop cached positions past ``length`` (transformers' own ``crop`` changed meaning across versions)."""
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, :length]
        layer.values = layer.values[:, :, :length]


def reindex_cache(cache, index) -> None:
    """Select / repeat batch rows of a DynamicCache in place."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
