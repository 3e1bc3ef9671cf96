"""The ``varlen`` scoring strategy, the CPU default: many pairs' tokens per forward pass, attention per pair.

It replays the decoder layer from the model's own modules, so it runs only for the architectures in
VARLEN_MODELS (tests/test_prefix_batching.py pins it to grouped's probabilities); others use grouped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .prefix_plan import packs, prefix_plan
from .scoring import combine_candidates, fold_token, prefix_cache, score_single

if TYPE_CHECKING:
    from .backend import TransformersBackend

VARLEN_TOKENS = 2048  # most tokens in one pass (the matrix products' rows; attention stays per pair)
VARLEN_MODELS = ("llama",)  # architectures whose decoder layer the varlen pass reproduces (tests/test_prefix_batching.py)


def varlen_supported(backend: TransformersBackend, variants) -> bool:
    """varlen reproduces the decoder layers of VARLEN_MODELS and needs at most one extra token per candidate (the fold)."""
    if getattr(backend.model.config, "model_type", None) not in VARLEN_MODELS:
        return False
    return all(len(s) == 1 for v in variants for s in v) or fold_token(variants) is not None


def score_varlen(backend: TransformersBackend, seqs: list[list[int]], variants) -> list[list[float | None]]:
    """Ragged batching: the call's shared prefix once, then many pairs per forward pass with no padding and
    no wasted attention.

    The tokens of several groups (a pair's context, then each order's suffix and the fold token) are laid
    end to end. Everything that acts on one token at a time (norms, projections, the MLP) runs on all of
    them at once, as large matrix products; attention runs per group, its queries against the prefix's
    cached keys and the group's own, under the group's mask (a suffix sees the context and itself, not
    the other order). So each prompt's log-probs are those of scoring it alone, from passes of up to
    VARLEN_TOKENS tokens. The decoder layer is replayed from the model's own modules (VARLEN_MODELS);
    other architectures use grouped.
    """
    import sys

    import torch
    import torch.nn.functional as F

    p0, groups = prefix_plan(seqs)
    if p0 == 0:
        return [score_single(backend, s, variants)[0] for s in seqs]
    fold = fold_token(variants)
    inner, dev = backend.model.model, backend.device
    rope = sys.modules[type(inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
    out: list[list[float | None]] = [None] * len(seqs)  # type: ignore[list-item]
    with torch.inference_mode():
        cache, prefix = prefix_cache(backend, seqs[0][:p0])
        for pack in packs(groups, seqs, p0, VARLEN_TOKENS):
            ids: list[int] = []
            pos: list[int] = []
            keep: list[int] = []  # per prompt: its last token, then (with a fold) the fold token
            rows: list[int] = []
            spans = []  # per group: (start, end, mask over prefix + the group's tokens)
            for a, b, lg in pack:
                start = len(ids)
                ids += seqs[a][p0:lg]
                pos += range(p0, lg)
                own = [-1] * (lg - p0)
                for r in range(a, b):
                    sfx = seqs[r][lg:]
                    ids += sfx
                    pos += range(lg, len(seqs[r]))
                    own += [r] * len(sfx)
                    keep.append(len(ids) - 1)
                    rows.append(r)
                    if fold is not None:
                        ids.append(fold)
                        pos.append(len(seqs[r]))
                        own.append(r)
                        keep.append(len(ids) - 1)
                n = len(ids) - start
                o = torch.tensor(own)
                allowed = torch.ones((n, n), dtype=torch.bool).tril_() & ((o[None, :] == -1) | (o[None, :] == o[:, None]))
                spans.append((start, len(ids), torch.cat([torch.ones((n, p0), dtype=torch.bool), allowed], dim=1).to(dev)))
            T = len(ids)
            backend.stats.tokens_prefilled += T - (len(rows) if fold is not None else 0)  # fold tokens are not prompt
            h = inner.embed_tokens(torch.tensor([ids], device=dev))
            cos, sin = inner.rotary_emb(h, torch.tensor([pos], device=dev))
            for layer, (pk, pv) in zip(inner.layers, prefix):
                att = layer.self_attn
                x = layer.input_layernorm(h)
                q = att.q_proj(x).view(1, T, -1, att.head_dim).transpose(1, 2)
                k = att.k_proj(x).view(1, T, -1, att.head_dim).transpose(1, 2)
                v = att.v_proj(x).view(1, T, -1, att.head_dim).transpose(1, 2)
                q, k = rope(q, k, cos, sin)
                y = torch.empty_like(q)
                for s, e, m in spans:
                    kk = torch.cat([pk, k[:, :, s:e]], dim=2)
                    vv = torch.cat([pv, v[:, :, s:e]], dim=2)
                    y[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], kk, vv, attn_mask=m, scale=att.scaling, enable_gqa=True)
                h = h + att.o_proj(y.transpose(1, 2).reshape(1, T, -1))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            lp = torch.log_softmax(backend.model.lm_head(inner.norm(h[0, keep])).float(), dim=-1).cpu()
            if fold is None:
                res = combine_candidates(lp, variants, lambda pref: lp)  # single-token candidates: never extended
            else:
                res = combine_candidates(lp[0::2], variants, lambda pref, after=lp[1::2]: after)
            for r, lps in zip(rows, res):
                out[r] = lps
    return out
