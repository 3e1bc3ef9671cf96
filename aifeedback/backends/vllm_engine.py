"""The ``vllm`` backend: vLLM's offline ``LLM`` engine with prefix caching, for GPUs.

Scoring gives every candidate an exact log-probability, defined as on the transformers
backend: each candidate is spelled as written and with a leading space, the spellings'
probabilities add up, and a candidate loses the mass of longer candidates it starts
("1" against "10"). How the engine is asked depends on its version:

- vLLM 0.20.0 and later have ``SamplingParams.logprob_token_ids`` (vLLM PR #34539): the
  exact log-probs of listed token ids at the next position, whatever their rank. Each
  prompt gets one greedy one-token request per distinct prefix of the spellings (the
  prompt itself, then e.g. the " " of " 1"), listing the tokens that can follow it.
  These are plain requests, so they read the prefix cache.
- Before 0.20.0: one request per prompt reads the top 20 log-probs (``max_logprobs``);
  a spelling of several tokens, or a token outside the top 20, is then scored exactly
  through ``prompt_logprobs`` on prompt + spelling (such requests recompute their
  prompt: vLLM does not read the prefix cache for them).

Requests reach the engine in the order of the prompts, each prompt's requests together,
so both orders of a pair (adjacent in the labeler's list) and their candidate prefixes
follow each other and the prefix cache serves what they share.

``tensor_parallel_size`` splits one model over GPUs. One ``LLM`` in one process is one
replica (vLLM refuses ``LLM(data_parallel_size>1)`` there), so replicas are workers.
``tests/test_backend_vllm.py`` runs this module against a stand-in for vLLM 0.33.0.
"""

from __future__ import annotations

import math
import threading

from .. import usage
from ..config import SamplingConfig, VLLMBackendConfig
from ..errors import BackendError, ConfigError
from ..models import resolve
from .base import BackendStats, Capabilities, Chat, ChatTokenizer, ChoiceResult, Completion, GenerationResult, ScoringPrompt, candidate_variants, normalise

TOP_LOGPROBS = 20  # the engine's max_logprobs, and the top-k read before vLLM 0.20.0
# Ids listed per request. vLLM 0.20.0 returns them only with logprobs=len(ids) set too (it cuts the list to
# `logprobs` ids), 0.21.0 caps the list at 128 (MAX_LOGPROB_TOKEN_IDS), 0.22.0 requires logprobs == len(ids)
# when both are set, and every version checks logprobs against max_logprobs. logprobs=len(ids) satisfies
# 0.20.0 to 0.34.0 (read in each release's vllm/sampling_params.py, 2026-12-05).
IDS_PER_REQUEST = TOP_LOGPROBS

Seq = tuple[int, ...]


def has_token_ids(sampling_params_cls) -> bool:
    """Whether this vLLM has ``SamplingParams.logprob_token_ids`` (added in 0.20.0; SamplingParams is a msgspec Struct)."""
    return "logprob_token_ids" in getattr(sampling_params_cls, "__struct_fields__", ())


def spelling_prefixes(seqs: list[Seq]) -> list[tuple[Seq, list[int]]]:
    """The prefixes a request is needed at, shortest first, each with the tokens that can follow it in ``seqs``."""
    nxt: dict[Seq, set[int]] = {}
    for s in seqs:
        for d in range(len(s)):
            nxt.setdefault(s[:d], set()).add(s[d])
    return [(p, sorted(nxt[p])) for p in sorted(nxt, key=lambda p: (len(p), p))]


def combine_candidates(seq_lp: dict[Seq, float], variants: list[list[list[int]]]) -> list[float]:
    """Log-prob of each candidate from its spellings' log-probs, as the transformers backend defines it:
    the spellings' probabilities added, less those of other candidates' spellings that extend one of them."""
    probs = {s: math.exp(v) for s, v in seq_lp.items()}
    cands = [[tuple(s) for s in v] for v in variants]
    out = []
    for k, spellings in enumerate(cands):
        p = sum(probs[s] for s in spellings)
        longer = {t for j, other in enumerate(cands) if j != k for t in other for s in spellings if len(t) > len(s) and t[: len(s)] == s}
        p_ex = p - sum(probs[t] for t in longer)
        out.append(math.log(max(p_ex, p * 1e-6, 1e-30)))
    return out


class VLLMBackend:
    name = "vllm"

    def __init__(self, cfg: VLLMBackendConfig):
        try:
            import vllm
        except ImportError as exc:
            raise BackendError(f"the vllm backend needs vllm: pip install 'aifeedback[vllm]' ({exc})") from None
        if cfg.data_parallel_size > 1:
            raise ConfigError(
                f"backend.data_parallel_size={cfg.data_parallel_size}: the vllm backend runs one engine per process, and vLLM "
                "refuses LLM(data_parallel_size>1) in one process. Run replicas as workers instead (--runner ray --workers "
                f"{cfg.data_parallel_size}, one GPU each), or serve the model data-parallel with `vllm serve` (its data-parallel-size "
                "option) and use the openai backend"
            )
        self.cfg = cfg
        self.model_id = cfg.model
        self.vllm_version = str(getattr(vllm, "__version__", "unknown"))
        self.token_ids = has_token_ids(vllm.SamplingParams)  # exact log-probs of given ids (vLLM >= 0.20.0)
        kwargs = dict(
            model=str(resolve(cfg.model).path),
            enable_prefix_caching=True,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype=cfg.dtype,
            max_logprobs=TOP_LOGPROBS,
        )
        if cfg.max_context:
            kwargs["max_model_len"] = cfg.max_context
        self.llm = vllm.LLM(**kwargs)
        self._lock = threading.Lock()
        self.tok = self.llm.get_tokenizer()
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self.capabilities = Capabilities(logprobs=True, prefix_reuse=True, in_process=True, token_counts_exact=True, max_context=self.max_context, tokenizer=True)
        self.tokenizer = ChatTokenizer(self.tok, self.render)
        self.stats = BackendStats()

    # engine -----------------------------------------------------------------
    def _generate(self, prompts: list[dict], params) -> list:
        with self._lock:  # one engine call at a time per process (a thread runner shares the engine)
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        for o in outs:
            self.stats.tokens_prefilled += len(o.prompt_token_ids) - int(o.num_cached_tokens or 0)
        return outs

    @staticmethod
    def _params(**kw):
        from vllm import SamplingParams

        try:
            return SamplingParams(**kw)
        except ValueError as exc:  # VLLMValidationError is a ValueError
            raise BackendError(f"vLLM refused the sampling settings {kw}: {exc}") from None

    # prompts ----------------------------------------------------------------
    def render(self, messages: Chat) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _fit(ids: list[int], budget: int) -> tuple[list[int], bool]:
        """Cut the middle of an over-long prompt, keeping its head and its end (where the question and answer point are)."""
        if len(ids) <= budget:
            return ids, False
        head = budget // 4
        return ids[:head] + ids[len(ids) - (budget - head) :], True

    # generation -------------------------------------------------------------
    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        self.stats.generate_calls += 1
        budget = max(8, self.max_context - params.max_new_tokens)
        prompts, sps, index = [], [], []
        for i, chat in enumerate(chats):
            ids, trunc = self._fit(self.encode(self.render(chat)), budget)
            for j in range(params.n):  # a chat's samples side by side: the prefix cache serves its prompt
                seed = None if seeds is None else int(seeds[i][j])
                prompts.append({"prompt_token_ids": ids})
                sps.append(self._params(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens, seed=seed))
                index.append((i, j, trunc, seed))
        outs = self._generate(prompts, sps) if prompts else []
        results = [GenerationResult(completions=[None] * params.n) for _ in chats]  # type: ignore[list-item]
        for (i, j, trunc, seed), o in zip(index, outs):
            c = o.outputs[0]
            results[i].completions[j] = Completion(
                text=c.text.strip(),
                prompt_tokens=len(o.prompt_token_ids),
                completion_tokens=len(c.token_ids),
                finish_reason=str(c.finish_reason or ""),
                seed=seed,
                prompt_truncated=trunc,
            )
            self.stats.tokens_generated += len(c.token_ids)
        self.stats.chats_generated += len(chats)
        done = [c for r in results for c in r.completions]  # the engine's own token counts
        usage.record(sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done), requests=len(done))
        return results

    # scoring ----------------------------------------------------------------
    def candidate_variants(self, candidates: list[str]) -> list[list[list[int]]]:
        """Token sequences that spell each candidate: as written and with a leading space."""
        return candidate_variants(self.encode, candidates)

    def choice_probs(self, prompts: list[ScoringPrompt], candidates: list[str]) -> list[ChoiceResult]:
        self.stats.score_calls += 1
        if not prompts:
            return []
        variants = self.candidate_variants(candidates)
        seqs = sorted({tuple(s) for v in variants for s in v})
        budget = max(1, self.max_context - max(len(s) for s in seqs))  # prompt + a whole spelling fit the context
        encoded = [self._fit(self.encode(self.render(p.messages) + p.answer_prefix), budget) for p in prompts]
        ids = [e[0] for e in encoded]
        seq_lps = self._score_by_token_ids(ids, seqs) if self.token_ids else self._score_by_top_logprobs(ids, seqs)
        results = []
        for (p_ids, trunc), slp in zip(encoded, seq_lps):
            lps = combine_candidates(slp, variants)
            results.append(ChoiceResult(normalise(lps), lps, "logprobs", prompt_tokens=len(p_ids), truncated=trunc))
        self.stats.prompts_scored += len(prompts)
        usage.record(sum(len(i) for i in ids), 0, requests=len(prompts))  # scoring reads log-probs: no completion tokens
        return results

    def _score_by_token_ids(self, prompt_ids: list[list[int]], seqs: list[Seq]) -> list[dict[Seq, float]]:
        """vLLM >= 0.20.0: each spelling's log-prob from ``logprob_token_ids`` at each of its prefixes."""
        nodes = spelling_prefixes(seqs)
        params = {}
        reqs, sps, keys = [], [], []
        for i, ids in enumerate(prompt_ids):
            for prefix, nxt in nodes:
                for c in range(0, len(nxt), IDS_PER_REQUEST):
                    chunk = tuple(nxt[c : c + IDS_PER_REQUEST])
                    if chunk not in params:  # when both are set, logprobs must equal len(logprob_token_ids)
                        params[chunk] = self._params(temperature=0.0, max_tokens=1, logprobs=len(chunk), logprob_token_ids=list(chunk))
                    reqs.append({"prompt_token_ids": ids + list(prefix)})
                    sps.append(params[chunk])
                    keys.append((i, prefix, chunk))
        outs = self._generate(reqs, sps)
        step: list[dict[tuple[Seq, int], float]] = [{} for _ in prompt_ids]
        for (i, prefix, chunk), o in zip(keys, outs):
            got = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            for t in chunk:
                if t not in got:
                    raise BackendError(f"vLLM {self.vllm_version} returned no log-prob for token {t}, which logprob_token_ids asked for")
                step[i][(prefix, t)] = got[t].logprob
        return [{s: sum(step[i][(s[:d], s[d])] for d in range(len(s))) for s in seqs} for i in range(len(prompt_ids))]

    def _score_by_top_logprobs(self, prompt_ids: list[list[int]], seqs: list[Seq]) -> list[dict[Seq, float]]:
        """Before vLLM 0.20.0: the top log-probs after each prompt; the rest exactly through ``prompt_logprobs``."""
        first = self._generate([{"prompt_token_ids": ids} for ids in prompt_ids], self._params(temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS))
        out: list[dict[Seq, float]] = []
        rest: list[tuple[int, Seq]] = []
        for i, o in enumerate(first):
            top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            out.append({s: top[s[0]].logprob for s in seqs if len(s) == 1 and s[0] in top})
            rest.extend((i, s) for s in seqs if s not in out[i])
        if rest:
            sp = self._params(temperature=0.0, max_tokens=1, prompt_logprobs=0)  # the prompt's own tokens, whatever their rank
            outs = self._generate([{"prompt_token_ids": prompt_ids[i] + list(s)} for i, s in rest], sp)
            for (i, s), o in zip(rest, outs):
                n = len(prompt_ids[i])  # prompt_logprobs[t] scores token t; entry 0 is None
                out[i][s] = sum(o.prompt_logprobs[n + d][t].logprob for d, t in enumerate(s))
        return out

    def close(self) -> None:
        pass
