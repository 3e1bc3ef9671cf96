"""The ``transformers`` backend: in-process, CPU or GPU, the embedded default.

* ``generate``: batched decoding with our own loop (left padding, a KV cache,
  per-row seeded sampling); ``model.generate`` spends most of its time in
  per-step bookkeeping on CPU.
* ``choice_probs``: the prompts of a batch are scored as a two-level prefix
  tree (on CPU, ``varlen``: many pairs' tokens per forward pass, attention per pair). The prefix shared by the whole batch (preamble, few-shot exemplars) is
  computed once; each run of consecutive prompts sharing a longer prefix (the
  two orders of a pair share the context) computes that part once more; only
  the remaining suffixes are computed per prompt. Padding sits between the
  levels and is masked, with explicit position ids, so every row ends at the
  answer point.
"""

from __future__ import annotations

import os
import threading

from .. import usage
from ..config import SamplingConfig, TransformersBackendConfig
from ..errors import BackendError
from ..models import resolve
from .base import BackendStats, Capabilities, Chat, ChatTokenizer, ChoiceResult, Completion, GenerationResult, ScoringPrompt, normalise

_LOADED: dict[tuple, tuple] = {}
_LOAD_LOCK = threading.Lock()
MIN_GROUP_GAIN = 8  # a group level is used only when it shares this many more tokens
PACK_TOKENS = 2048  # packed strategy: most tokens in one forward pass (its block mask is PACK_TOKENS x (prefix + PACK_TOKENS))
VARLEN_TOKENS = 2048  # varlen strategy: most tokens in one pass (the matrix products' rows; attention stays per pair)
VARLEN_MODELS = ("llama",)  # architectures whose decoder layer the varlen pass reproduces (tests/test_prefix_batching.py)


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def load_causal_lm(model_id: str, device: str = "auto", dtype: str = "float32"):
    """Load (model, tokenizer) once per process; later calls return the same objects."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(model_id)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    key = (str(resolved.path), dev, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
            tok = AutoTokenizer.from_pretrained(resolved.path)
            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype).to(dev).eval()
            _LOADED[key] = (model, tok, resolved)
        return _LOADED[key]


class TransformersBackend:
    name = "transformers"

    def __init__(self, cfg: TransformersBackendConfig):
        import torch

        self.cfg = cfg
        self.model_id = cfg.model
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.model, self.tok, self.resolved = load_causal_lm(cfg.model, cfg.device, cfg.dtype)
        self.device = self.model.device
        import inspect

        # transformers renamed past_key_values to cache in 5.2x; accept both
        self._ckw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        mc = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_context = min(cfg.max_context or mc, mc)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.pad_id = self.tok.pad_token_id
        eos = set()
        for tid in (self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>"), getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(tid, int) and tid >= 0 and tid != self.tok.unk_token_id:
                eos.add(tid)
            elif isinstance(tid, list):
                eos.update(t for t in tid if isinstance(t, int))
        self.eos_ids = sorted(eos)
        self._eos = frozenset(eos)
        self.capabilities = Capabilities(logprobs=True, prefix_reuse=True, in_process=True, token_counts_exact=True, max_context=self.max_context, tokenizer=True)
        self.tokenizer = ChatTokenizer(self.tok, self.render)
        self.stats = BackendStats()
        self._lock = threading.Lock()  # one forward pass at a time per process

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model_id!r}, device={self.device})"

    # prompts ----------------------------------------------------------------
    def render(self, messages: Chat) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int], budget: int) -> tuple[list[int], bool]:
        """Cut the middle of an over-long prompt, keeping its head and its end (where the question and answer point are)."""
        if len(ids) <= budget:
            return ids, False
        head = budget // 4
        return ids[:head] + ids[len(ids) - (budget - head) :], True

    # generation -------------------------------------------------------------
    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        self.stats.generate_calls += 1
        rows: list[tuple[int, int, list[int], bool, int | None]] = []  # (chat, sample, ids, truncated, seed)
        budget = max(8, self.max_context - params.max_new_tokens)
        for i, chat in enumerate(chats):
            ids, trunc = self._fit(self.encode(self.render(chat)), budget)
            for j in range(params.n):
                rows.append((i, j, ids, trunc, None if seeds is None else int(seeds[i][j])))
        results = [GenerationResult(completions=[None] * params.n) for _ in chats]  # type: ignore[list-item]
        outs = self.sample_tokens([r[2] for r in rows], params, [r[4] for r in rows])
        for (i, j, ids, trunc, seed), (toks, finish) in zip(rows, outs):
            results[i].completions[j] = Completion(
                text=self.tok.decode(toks, skip_special_tokens=True).strip(),
                prompt_tokens=len(ids),
                completion_tokens=len(toks),
                finish_reason=finish,
                seed=seed,
                prompt_truncated=trunc,
            )
        self.stats.chats_generated += len(chats)
        done = [c for r in results for c in r.completions]  # exact counts, from the tokenizer, for token accounting
        usage.record(sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done), requests=len(done))
        return results

    def sample_tokens(self, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
        """Decode already-tokenised prompts with the batched decoder: (generated ids, finish reason) per prompt, in order.

        Micro-batches of ``gen_batch_size`` are cut after sorting by length, so each pads little. The ids
        exclude the stop token (finish "stop"); callers that need sequence log-probabilities (the loop's KL)
        work from these exact ids rather than from re-tokenised text. ``generate`` decodes through here.
        """
        order = sorted(range(len(prompts)), key=lambda r: len(prompts[r]))
        out: list[tuple[list[int], str]] = [([], "length")] * len(prompts)
        bs = self.cfg.gen_batch_size
        with self._lock:
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                for r, res in zip(idx, self._decode([prompts[r] for r in idx], params, [seeds[r] for r in idx])):
                    out[r] = res
                    self.stats.tokens_generated += len(res[0])
                    self.stats.tokens_prefilled += len(prompts[r])
        return out

    def _decode(self, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
        import torch
        from transformers import DynamicCache

        B = len(prompts)
        ids, mask = _left_pad(prompts, self.pad_id)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s if s is not None else 0)
            gens.append(g)
        out_tokens: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        finish = ["length"] * B
        cache = DynamicCache()
        cache.layers = [_reserved_layer(ids.shape[1] + params.max_new_tokens) for _ in range(self.model.config.num_hidden_layers)]
        cache.layer_class_to_replicate = None
        with torch.inference_mode():
            logits = self._fwd(ids, mask, pos, cache, count=False).cpu()
            for step in range(params.max_new_tokens):
                nxt = self._sample(logits, params, gens)
                for b in range(B):
                    if finished[b]:
                        nxt[b] = self.pad_id
                        continue
                    t = int(nxt[b])
                    if t in self._eos:
                        finished[b] = True
                        finish[b] = "stop"
                    else:
                        out_tokens[b].append(t)
                if all(finished) or step == params.max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
                pos = pos[:, -1:] + 1
                logits = self._fwd(nxt[:, None], mask, pos, cache, count=False).cpu()
        return [(out_tokens[b], finish[b]) for b in range(B)]

    @staticmethod
    def _sample(logits, params: SamplingConfig, gens):
        import torch

        if params.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # nucleus from each row's top 256 (else 4,096) tokens when they hold the mass (nearly always):
            # the same distribution as a full-vocabulary sort, at a fraction of its cost. The width is
            # chosen per row, so a seeded row draws the same token whatever else is in its batch
            # (multinomial's random draws depend on the width).
            V = probs.shape[-1]
            top, top_i = probs.topk(min(256, V), dim=-1)
            enough = (top.sum(-1) >= params.top_p).tolist()
            top = top * (top.cumsum(-1) - top < params.top_p)  # the nucleus of every row, batched
            picks = []
            for b in range(probs.shape[0]):
                sp, si = top[b], top_i[b]
                if not enough[b]:  # rare: a flat row, widened on its own
                    sp, si = probs[b].topk(min(4096, V))
                    if float(sp.sum()) < params.top_p:
                        sp, si = probs[b].sort(descending=True)
                    sp = sp * (sp.cumsum(-1) - sp < params.top_p)
                picks.append(si[torch.multinomial(sp, 1, generator=gens[b])[0]])
            return torch.stack(picks)
        return torch.stack([torch.multinomial(probs[b], 1, generator=gens[b])[0] for b in range(probs.shape[0])])

    def _fwd(self, ids, mask, pos, cache, count: bool = True, keep: int = 1):
        """One forward pass into ``cache``; returns the last position's logits (B, vocab), or the last ``keep``
        positions' (B, keep, vocab). Counts the real tokens it computed."""
        if count:
            self.stats.tokens_prefilled += int(mask[:, -ids.shape[1] :].sum())
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), **{self._ckw: cache}, use_cache=True, logits_to_keep=keep)
        return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()

    # scoring ----------------------------------------------------------------
    def candidate_variants(self, candidates: list[str]) -> list[list[list[int]]]:
        """Token sequences that spell each candidate: as written and with a leading space."""
        out = []
        for c in candidates:
            seqs = []
            for text in (c, " " + c.lstrip()):
                t = self.encode(text)
                if t and t not in seqs:
                    seqs.append(t)
            if not seqs:
                raise BackendError(f"candidate {c!r} encodes to no tokens")
            out.append(seqs)
        return out

    def choice_probs(self, prompts: list[ScoringPrompt], candidates: list[str]) -> list[ChoiceResult]:
        self.stats.score_calls += 1
        if not prompts:
            return []
        variants = self.candidate_variants(candidates)
        max_extra = max(len(s) for v in variants for s in v) - 1
        budget = self.max_context - 1 - max_extra
        encoded = []
        for p in prompts:
            ids, trunc = self._fit(self.encode(self.render(p.messages) + p.answer_prefix), budget)
            encoded.append((ids, trunc))
        results: list[ChoiceResult | None] = [None] * len(encoded)
        seqs = [e[0] for e in encoded]
        strategy = self.cfg.score_strategy
        if strategy == "auto":
            strategy = "batched" if self.device.type == "cuda" else "varlen"
        with self._lock:
            if strategy == "varlen" and not self._varlen_supported(variants):
                strategy = "grouped"
            if strategy == "grouped":
                plan = [(list(range(len(seqs))), self._score_grouped(seqs, variants))]
            elif strategy == "varlen":
                plan = [(list(range(len(seqs))), self._score_varlen(seqs, variants))]
            elif strategy == "packed":
                plan = [(list(range(len(seqs))), self._score_packed(seqs, variants))]
            else:
                plan = [(chunk, self._score_sequences([seqs[i] for i in chunk], variants)) for chunk in self._score_chunks(seqs)]
            for chunk, seq_lp in plan:
                for i, lps in zip(chunk, seq_lp):
                    ids, trunc = encoded[i]
                    results[i] = ChoiceResult(normalise(lps), lps, "logprobs", prompt_tokens=len(ids), truncated=trunc)
        self.stats.prompts_scored += len(prompts)
        usage.record(sum(len(e[0]) for e in encoded), 0, requests=len(prompts))  # scoring reads log-probs: no completion tokens
        return results

    def _score_grouped(self, seqs: list[list[int]], variants) -> list[list[float | None]]:
        """CPU strategy: the call's shared prefix once; then each group (a pair's orders) on its own,
        its shared part at batch 1 and its suffixes together. No padding across pairs, so no wasted FLOPs."""
        import torch

        dev = self.device
        p0, groups = self.prefix_plan(seqs)
        if p0 == 0:
            return [self._score_sequences_single(s, variants)[0] for s in seqs]

        fwd = self._fwd
        out: list[list[float | None]] = []
        with torch.inference_mode():
            cache, base = self._prefix_cache(seqs[0][:p0])
            for a, b, lg in groups:
                for layer, (k, v) in zip(cache.layers, base):  # back to the shared prefix (update() never writes in place)
                    layer.keys, layer.values = k, v
                if lg > p0:
                    part = seqs[a][p0:lg]
                    fwd(torch.tensor([part]), torch.ones((1, lg), dtype=torch.long), torch.arange(p0, lg)[None], cache)
                rows = b - a
                _reindex_cache(cache, torch.zeros(rows, dtype=torch.long, device=dev))
                ids, sm = _left_pad([seqs[r][lg:] for r in range(a, b)], self.pad_id)
                mask = torch.cat([torch.ones((rows, lg), dtype=torch.long), sm], dim=1)
                pos = lg + (sm.cumsum(-1) - 1).clamp(min=0)
                out.extend(self._final_pass(ids, mask, pos, cache, lg + sm.sum(-1, keepdim=True), variants))
        return out

    def _prefix_cache(self, ids: list[int]):
        """A cache holding one forward pass over ``ids`` (the call's shared prefix), and each layer's (keys, values)
        to reset it to between groups or packs, or to attend to."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        self._fwd(torch.tensor([ids]), torch.ones((1, len(ids)), dtype=torch.long), torch.arange(len(ids))[None], cache)
        return cache, [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def _fold_token(variants) -> int | None:
        """The one token that starts every multi-token candidate spelling (" 1" = " " + "1"), if there is exactly one
        such prefix of length 1: it can ride along in the suffix pass instead of costing a pass of its own."""
        multi = {tuple(s[:d]) for v in variants for s in v if len(s) > 1 for d in range(1, len(s))}
        if len(multi) == 1:
            (pref,) = multi
            if len(pref) == 1:
                return pref[0]
        return None

    def _final_pass(self, ids, mask, pos, cache, real, variants) -> list[list[float | None]]:
        """The last forward pass of the grouped, batched and single strategies, and each candidate's log-prob after it.

        ``mask`` covers the cache and ``ids``; ``real`` is each row's length after the pass. When the candidates'
        multi-token spellings share one first token (``_fold_token``), it rides at the end of this pass: causal
        attention leaves the logits at the prompt's last token as they were, and the appended position gives
        the candidates' second tokens, so no extension pass is needed. Otherwise one extension pass per
        distinct multi-token prefix follows (:meth:`_candidate_logprobs`).
        """
        import torch

        fold = self._fold_token(variants)
        if fold is None:
            first_lp = torch.log_softmax(self._fwd(ids, mask, pos, cache), dim=-1).cpu()
            return self._candidate_logprobs(first_lp, variants, cache, mask, real, ids.shape[0])
        rows = ids.shape[0]
        self.stats.tokens_prefilled += int(mask[:, -ids.shape[1] :].sum())  # the fold token is not prompt
        ids = torch.cat([ids, torch.full((rows, 1), fold, dtype=torch.long)], dim=1)
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        pos = torch.cat([pos, real], dim=1)  # the fold token sits right after each row's last token
        lp = torch.log_softmax(self._fwd(ids, mask, pos, cache, count=False, keep=2), dim=-1).cpu()
        first_lp, after_fold = lp[:, 0], lp[:, 1]
        return _combine_candidates(first_lp, variants, lambda pref: after_fold)

    def _varlen_supported(self, variants) -> bool:
        """varlen reproduces the decoder layers of VARLEN_MODELS and needs at most one extra token per candidate (the fold)."""
        if getattr(self.model.config, "model_type", None) not in VARLEN_MODELS:
            return False
        return all(len(s) == 1 for v in variants for s in v) or self._fold_token(variants) is not None

    def _score_varlen(self, seqs: list[list[int]], variants) -> list[list[float | None]]:
        """Ragged batching: the call's shared prefix once, then many pairs per forward pass with no padding and
        no wasted attention.

        The tokens of several groups (a pair's context, then each order's suffix and the fold token) are laid
        end to end. Everything that acts on one token at a time (norms, projections, the MLP) runs on all of
        them at once, as large matrix products; attention runs per group, its queries against the prefix's
        cached keys and the group's own, under the group's mask (a suffix sees the context and itself, not
        the other order). So each prompt's log-probs are those of scoring it alone, from passes as large as
        packed's without its dense pack-wide attention. The decoder layer is replayed from the model's own
        modules (VARLEN_MODELS); other architectures use grouped.
        """
        import sys

        import torch
        import torch.nn.functional as F

        p0, groups = self.prefix_plan(seqs)
        if p0 == 0:
            return [self._score_sequences_single(s, variants)[0] for s in seqs]
        fold = self._fold_token(variants)
        inner, dev = self.model.model, self.device
        rope = sys.modules[type(inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
        out: list[list[float | None]] = [None] * len(seqs)  # type: ignore[list-item]
        with torch.inference_mode():
            cache, prefix = self._prefix_cache(seqs[0][:p0])
            for pack in _packs(groups, seqs, p0, VARLEN_TOKENS):
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
                self.stats.tokens_prefilled += T - (len(rows) if fold is not None else 0)  # fold tokens are not prompt
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
                lp = torch.log_softmax(self.model.lm_head(inner.norm(h[0, keep])).float(), dim=-1).cpu()
                if fold is None:
                    res = _combine_candidates(lp, variants, lambda pref: lp)  # single-token candidates: never extended
                else:
                    res = _combine_candidates(lp[0::2], variants, lambda pref, after=lp[1::2]: after)
                for r, lps in zip(rows, res):
                    out[r] = lps
        return out

    def _score_packed(self, seqs: list[list[int]], variants) -> list[list[float | None]]:
        """Prefix batching: the call's shared prefix once, then many groups (a pair's orders) packed into one
        sequence per forward pass, with no padding.

        A block mask over the packed tokens lets each group's shared part see the prefix and itself, and
        each prompt's own suffix see the prefix, its group's part and itself; positions restart per prompt
        as if it were alone. So every prompt's logits are those of the grouped strategy, from forward passes
        of up to PACK_TOKENS tokens instead of one pair's tokens (larger matrix products).
        """
        import torch

        p0, groups = self.prefix_plan(seqs)
        if p0 == 0:
            return [self._score_sequences_single(s, variants)[0] for s in seqs]
        out: list[list[float | None]] = [None] * len(seqs)  # type: ignore[list-item]
        packs = _packs(groups, seqs, p0, PACK_TOKENS)
        neg = torch.finfo(self.model.dtype).min
        with torch.inference_mode():
            cache, base = self._prefix_cache(seqs[0][:p0])
            for pack in packs:
                for layer, (k, v) in zip(cache.layers, base):  # back to the shared prefix (update() never writes in place)
                    layer.keys, layer.values = k, v
                ids, pos, grp, own = [], [], [], []  # own: the prompt a token belongs to, -1 for a group's shared part
                rows, last, real = [], [], []  # per prompt: its index, its last token in the pack, its length
                for gi, (a, b, lg) in enumerate(pack):
                    part = seqs[a][p0:lg]
                    ids += part
                    pos += range(p0, lg)
                    grp += [gi] * len(part)
                    own += [-1] * len(part)
                    for r in range(a, b):
                        sfx = seqs[r][lg:]
                        ids += sfx
                        pos += range(lg, lg + len(sfx))
                        grp += [gi] * len(sfx)
                        own += [r] * len(sfx)
                        rows.append(r)
                        last.append(len(ids) - 1)
                        real.append(len(seqs[r]))
                L = len(ids)
                g_t, o_t = torch.tensor(grp), torch.tensor(own)
                allowed = (torch.arange(L)[None, :] <= torch.arange(L)[:, None]) & (g_t[None, :] == g_t[:, None]) & ((o_t[None, :] == -1) | (o_t[None, :] == o_t[:, None]))
                mask = torch.zeros((L, p0 + L), dtype=self.model.dtype)
                mask[:, p0:].masked_fill_(~allowed, neg)
                self.stats.tokens_prefilled += L
                res = self.model(
                    input_ids=torch.tensor([ids]).to(self.device),
                    attention_mask=mask[None, None].to(self.device),
                    position_ids=torch.tensor([pos]).to(self.device),
                    **{self._ckw: cache},
                    use_cache=True,
                    logits_to_keep=torch.tensor(last).to(self.device),
                )
                first_lp = torch.log_softmax(res.logits[0].float(), dim=-1).cpu()
                seen = allowed[last]  # what each prompt's last token sees in the pack: the rows its continuations see

                def extend(pref: tuple[int, ...], seen=seen, real=real, L=L) -> "torch.Tensor":
                    """Log-probs after each prompt + ``pref``: one packed pass, cropped off again."""
                    d, R = len(pref), len(real)
                    q_ids = torch.tensor(list(pref) * R)[None]
                    q_pos = torch.tensor([n + j for n in real for j in range(d)])[None]
                    m = torch.full((R * d, p0 + L + R * d), neg, dtype=self.model.dtype)
                    m[:, :p0] = 0
                    m[:, p0 : p0 + L].masked_fill_(seen.repeat_interleave(d, dim=0), 0)
                    tri = torch.tril(torch.ones((d, d), dtype=torch.bool))
                    for i in range(R):
                        m[i * d : (i + 1) * d, p0 + L + i * d : p0 + L + (i + 1) * d].masked_fill_(tri, 0)
                    res = self.model(
                        input_ids=q_ids.to(self.device),
                        attention_mask=m[None, None].to(self.device),
                        position_ids=q_pos.to(self.device),
                        **{self._ckw: cache},
                        use_cache=True,
                        logits_to_keep=torch.tensor([i * d + d - 1 for i in range(R)]).to(self.device),
                    )
                    _crop_cache(cache, p0 + L)
                    return torch.log_softmax(res.logits[0].float(), dim=-1).cpu()

                for r, lps in zip(rows, _combine_candidates(first_lp, variants, extend)):
                    out[r] = lps
        return out

    def _score_chunks(self, seqs: list[list[int]]) -> list[list[int]]:
        """Cut prompts into forward batches: keep runs that share a prefix together, sort runs by length
        (little padding), and cap both rows and padded tokens per batch."""
        n = len(seqs)
        glob = min(_lcp(seqs[0], s) for s in seqs)
        units, start = [], 0
        for i in range(1, n + 1):
            if i == n or _lcp(seqs[start], seqs[i]) < glob + MIN_GROUP_GAIN:
                units.append(list(range(start, i)))
                start = i
        units.sort(key=lambda u: max(len(seqs[i]) for i in u))
        chunks, cur, width = [], [], 0
        max_rows, max_tokens = self.cfg.score_batch_size, self.cfg.score_batch_tokens
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

    def prefix_plan(self, seqs: list[list[int]]) -> tuple[int, list[tuple[int, int, int]]]:
        """(global prefix length, [(start, end, group prefix length)]) for a batch of token lists."""
        shortest = min(len(s) for s in seqs)
        p0 = min(shortest - 1, min(_lcp(seqs[0], s) for s in seqs))
        groups: list[tuple[int, int, int]] = []
        i = 0
        while i < len(seqs):
            j = i + 1
            lg = len(seqs[i]) - 1
            while j < len(seqs):
                cand = min(lg, _lcp(seqs[i], seqs[j]), len(seqs[j]) - 1)
                if cand < p0 + MIN_GROUP_GAIN:
                    break
                lg = cand
                j += 1
            if j == i + 1:
                lg = p0  # a lone prompt: nothing to share beyond the global prefix
            groups.append((i, j, max(lg, p0)))
            i = j
        return p0, groups

    def _score_sequences(self, seqs: list[list[int]], variants: list[list[list[int]]]) -> list[list[float | None]]:
        import torch
        from transformers import DynamicCache

        dev = self.device
        p0, groups = self.prefix_plan(seqs)
        if p0 == 0:  # nothing shared and nowhere safe to put padding: one prompt at a time
            out = []
            for s in seqs:
                out.extend(self._score_sequences_single(s, variants))
            return out

        fwd = self._fwd
        pad = self.pad_id

        with torch.inference_mode():
            # level 0: the prefix every prompt shares, once
            cache = DynamicCache()
            mask0 = torch.ones((1, p0), dtype=torch.long)
            fwd(torch.tensor([seqs[0][:p0]]), mask0, torch.arange(p0)[None], cache)
            # level 1: each group's own shared part, once per group
            G = len(groups)
            gparts = [seqs[a][p0:lg] for a, _, lg in groups]
            _reindex_cache(cache, torch.zeros(G, dtype=torch.long, device=dev))
            mask = mask0.expand(G, -1)
            real = torch.full((G, 1), p0, dtype=torch.long)
            if any(gparts):
                gids, gm = _left_pad(gparts, pad)
                gpos = real + (gm.cumsum(-1) - 1).clamp(min=0)
                mask = torch.cat([mask, gm], dim=1)
                fwd(gids, mask, gpos, cache)
                real = real + gm.sum(-1, keepdim=True)
            # level 2: every prompt's suffix, with the group rows of the cache
            row_group = torch.tensor([g for g, (a, b, _) in enumerate(groups) for _ in range(a, b)], dtype=torch.long)
            _reindex_cache(cache, row_group.to(dev))
            mask = mask[row_group]
            real = real[row_group]
            sparts = []
            for g, (a, b, lg) in enumerate(groups):
                sparts.extend(seqs[r][lg:] for r in range(a, b))
            sids, sm = _left_pad(sparts, pad)
            spos = real + (sm.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([mask, sm], dim=1)
            return self._final_pass(sids, mask, spos, cache, real + sm.sum(-1, keepdim=True), variants)

    def _candidate_logprobs(self, first_lp, variants, cache, mask, real, B) -> list[list[float | None]]:
        """Log-prob of each candidate for B prompts whose rows are in ``cache`` (see :func:`_combine_candidates`)."""
        import torch

        base_len = cache.get_seq_length()

        def extend(pref: tuple[int, ...]) -> "torch.Tensor":
            ids = torch.tensor([list(pref)] * B, dtype=torch.long)
            m = torch.cat([mask, torch.ones((B, len(pref)), dtype=torch.long)], dim=1)
            pos = real + torch.arange(len(pref))[None]
            with torch.inference_mode():
                lp = torch.log_softmax(self._fwd(ids, m, pos, cache, count=False), dim=-1).cpu()
            _crop_cache(cache, base_len)
            return lp

        return _combine_candidates(first_lp, variants, extend)

    def _score_sequences_single(self, seq: list[int], variants) -> list[list[float | None]]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        mask = torch.ones((1, len(seq)), dtype=torch.long)
        with torch.inference_mode():
            return self._final_pass(torch.tensor([seq]), mask, torch.arange(len(seq))[None], cache, torch.tensor([[len(seq)]]), variants)

    def close(self) -> None:
        pass


def _combine_candidates(first_lp, variants, extend) -> list[list[float | None]]:
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
        for s in all_seqs:
            if len(s) == len(pref) + 1 and s[: len(pref)] == pref:
                seq_lp[:, col[s]] += lp[:, s[-1]]
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


def _packs(groups, seqs, p0: int, limit: int) -> list[list[tuple[int, int, int]]]:
    """Cut consecutive groups into packs of at most ``limit`` tokens past the shared prefix (a larger group is a pack of its own)."""
    packs, cur, size = [], [], 0
    for g in groups:
        a, b, lg = g
        n = (lg - p0) + sum(len(seqs[r]) - lg for r in range(a, b))
        if cur and size + n > limit:
            packs.append(cur)
            cur, size = [], 0
        cur.append(g)
        size += n
    if cur:
        packs.append(cur)
    return packs


def _left_pad(parts: list[list[int]], pad_id: int):
    """(ids, mask) with each row right-aligned; empty rows are all padding."""
    import torch

    width = max(1, max(len(p) for p in parts))
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(parts), width), dtype=torch.long)
    for r, p in enumerate(parts):
        if p:
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
    return ids, mask


_RESERVED = None


def _reserved_layer(capacity: int):
    """A cache layer that writes each step's keys and values into buffers reserved for the whole decode,
    instead of concatenating (a DynamicLayer copies its whole cache on every step: 16% of batch-32
    decoding on the 2-core CPU, docs/performance.md). The keys are views of the filled part."""
    global _RESERVED
    if _RESERVED is None:
        from transformers.cache_utils import DynamicLayer

        class ReservedLayer(DynamicLayer):
            def __init__(self, capacity: int):
                super().__init__()
                self.capacity = capacity

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                keys = self.keys
                n, t = (keys.shape[-2] if keys is not None and keys.numel() else 0), key_states.shape[-2]
                buf = getattr(self, "k_buf", None)
                # the buffers hold the cache only while self.keys is still their view (crop keeps it;
                # a reset, reorder or batch change replaces it): otherwise start new ones from self.keys
                ours = buf is not None and n > 0 and keys.data_ptr() == buf.data_ptr() and keys.shape[0] == buf.shape[0]
                if not ours or n + t > self.capacity:
                    if n + t > self.capacity:
                        self.capacity = 2 * (n + t)
                    b, h, _, d = key_states.shape
                    k_new, v_new = key_states.new_empty((b, h, self.capacity, d)), value_states.new_empty((b, h, self.capacity, d))
                    if n:
                        k_new[:, :, :n] = keys
                        v_new[:, :, :n] = self.values
                    self.k_buf, self.v_buf = k_new, v_new
                self.k_buf[:, :, n : n + t] = key_states
                self.v_buf[:, :, n : n + t] = value_states
                self.keys, self.values = self.k_buf[:, :, : n + t], self.v_buf[:, :, : n + t]
                return self.keys, self.values

        _RESERVED = ReservedLayer
    return _RESERVED(capacity)


def _crop_cache(cache, length: int) -> None:
    """Drop cached positions past ``length`` (transformers' own ``crop`` changed meaning across versions)."""
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, :length]
        layer.values = layer.values[:, :, :length]


def _reindex_cache(cache, index) -> None:
    """Select / repeat batch rows of a DynamicCache in place."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
