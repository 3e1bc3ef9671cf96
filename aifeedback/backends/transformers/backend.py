"""The ``transformers`` backend: in-process, CPU or GPU, the embedded default.

* ``generate``: batched decoding with our own loop (:mod:`.decoding`: left padding, a KV cache,
  per-row seeded sampling); ``model.generate`` spends most of its time in per-step bookkeeping on CPU.
* ``choice_probs``: the prompts of a batch are scored as a two-level prefix tree (:mod:`.prefix_plan`;
  on CPU, ``varlen``: many pairs' tokens per forward pass, attention per pair). The prefix shared by the
  whole batch (preamble, few-shot exemplars) is computed once; each run of consecutive prompts sharing a
  longer prefix (the two orders of a pair share the context) computes that part once more; only the
  remaining suffixes are computed per prompt. The strategies are in :mod:`.scoring` and :mod:`.varlen`.
"""

from __future__ import annotations

import threading

from ... import usage
from ...config import SamplingConfig, TransformersBackendConfig
from ..base import BackendStats, Capabilities, Chat, ChatTokenizer, ChoiceResult, Completion, GenerationResult, ScoringPrompt, candidate_variants, normalise
from .decoding import decode
from .loading import load_causal_lm
from .prefix_plan import score_chunks
from .scoring import score_batched, score_grouped
from .varlen import score_varlen, varlen_supported


def free_device_memory(device) -> int:
    """Bytes a new allocation can use on a GPU: the driver's free memory and what torch's allocator holds unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class TransformersBackend:
    name = "transformers"

    def __init__(self, cfg: TransformersBackendConfig):
        import torch

        self.cfg = cfg
        self.model_id = cfg.model
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.model, self.tok, self.resolved = load_causal_lm(cfg.model, cfg.device, cfg.resolved_dtype())
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
        self.eos_set = frozenset(eos)  # what ends a decoded row
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
        bs = self.device_gen_batch(max((len(p) for p in prompts), default=0) + params.max_new_tokens)
        with self._lock:
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                for r, res in zip(idx, decode(self, [prompts[r] for r in idx], params, [seeds[r] for r in idx])):
                    out[r] = res
                    self.stats.tokens_generated += len(res[0])
                    self.stats.tokens_prefilled += len(prompts[r])
        return out

    def forward(self, ids, mask, pos, cache, count: bool = True, keep: int = 1):
        """One forward pass into ``cache``; returns the last position's logits (B, vocab), or the last ``keep``
        positions' (B, keep, vocab). Counts the real tokens it computed."""
        if count:
            self.stats.tokens_prefilled += int(mask[:, -ids.shape[1] :].sum())
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=None if mask is None else mask.to(dev), position_ids=pos.to(dev), **{self._ckw: cache}, use_cache=True, logits_to_keep=keep)
        return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()

    # scoring ----------------------------------------------------------------
    def candidate_variants(self, candidates: list[str]) -> list[list[list[int]]]:
        """Token sequences that spell each candidate: as written and with a leading space."""
        return candidate_variants(self.encode, candidates)

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
        rows_cap, tokens_cap = self.cfg.score_batch_size, self.cfg.score_batch_tokens
        if strategy == "auto":
            strategy = "batched" if self.device.type == "cuda" else "varlen"
            if strategy == "batched":
                rows_cap, tokens_cap = self.device_score_batch()
        with self._lock:
            if strategy == "varlen" and not varlen_supported(self, variants):
                strategy = "grouped"
            if strategy == "grouped":
                plan = [(list(range(len(seqs))), score_grouped(self, seqs, variants))]
            elif strategy == "varlen":
                plan = [(list(range(len(seqs))), score_varlen(self, seqs, variants))]
            else:
                chunks = score_chunks(seqs, rows_cap, tokens_cap)  # sorted by length: little padding
                plan = [(chunk, score_batched(self, [seqs[i] for i in chunk], variants)) for chunk in chunks]
            for chunk, seq_lp in plan:
                for i, lps in zip(chunk, seq_lp):
                    ids, trunc = encoded[i]
                    results[i] = ChoiceResult(normalise(lps), lps, "logprobs", prompt_tokens=len(ids), truncated=trunc)
        self.stats.prompts_scored += len(prompts)
        usage.record(sum(len(e[0]) for e in encoded), 0, requests=len(prompts))  # scoring reads log-probs: no completion tokens
        return results

    def device_score_batch(self) -> tuple[int, int]:
        """(rows, padded tokens) per scoring pass for ``auto`` on a GPU: sized by the device's free memory, not
        the CPU's 12,288 tokens, unless score_batch_size / score_batch_tokens were set. A token of a pass holds
        its keys and values in every layer and, transiently, one layer's activations (hidden and MLP width);
        a quarter of the free memory goes to them."""
        c = self.model.config
        set_ = self.cfg.model_fields_set
        rows, tokens = self.cfg.score_batch_size, self.cfg.score_batch_tokens
        if self.device.type != "cuda" or ("score_batch_size" in set_ and "score_batch_tokens" in set_):
            return rows, tokens
        free = free_device_memory(self.device)
        elem = next(self.model.parameters()).element_size()
        per_token = self.kv_bytes_per_token() + elem * (4 * c.hidden_size + 3 * getattr(c, "intermediate_size", 4 * c.hidden_size))
        fit = int(free * 0.25 // per_token)
        if "score_batch_tokens" not in set_:
            tokens = max(self.cfg.score_batch_tokens, min(fit, 262144))
        if "score_batch_size" not in set_:
            rows = max(self.cfg.score_batch_size, min(1024, tokens // 128))
        return rows, tokens

    def device_gen_batch(self, seq_len: int) -> int:
        """Rows decoded together: ``gen_batch_size`` on CPU or when set; on a GPU, as many rows as a quarter of the
        free memory holds, each with its KV cache for ``seq_len`` tokens and the sampler's full-vocabulary buffers
        (logits, probabilities, the sort's values and indices, the noise hash's int64 temporaries: 64 bytes a
        token id), at least 32 and at most 1,024."""
        if self.device.type != "cuda" or "gen_batch_size" in self.cfg.model_fields_set:
            return self.cfg.gen_batch_size
        per_row = self.kv_bytes_per_token() * max(1, seq_len) + 64 * self.model.config.vocab_size
        return max(self.cfg.gen_batch_size, min(1024, int(free_device_memory(self.device) * 0.25 // per_row)))

    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take in the cache, over every layer."""
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return next(self.model.parameters()).element_size() * 2 * c.num_hidden_layers * heads * head_dim

    def close(self) -> None:
        pass
