"""The ``vllm`` backend: vLLM's offline ``LLM`` engine with prefix caching, for GPUs.

Scoring reads the first generated token's top log-probs (``logprobs=20``) with
greedy decoding of one token; prompts that share a prefix (preamble, few-shot,
the context of both orders) hit vLLM's automatic prefix cache. Multi-token
candidates are scored exactly through ``prompt_logprobs`` on prompt+candidate.

Parallelism passes straight through: ``tensor_parallel_size`` splits a model over
GPUs; ``data_parallel_size`` runs replicas.
"""

from __future__ import annotations

import threading

import math

from ..config import SamplingConfig, VLLMBackendConfig
from ..errors import BackendError
from ..models import resolve
from .base import ChatTokenizer, BackendStats, Capabilities, Chat, ChoiceResult, Completion, GenerationResult, ScoringPrompt, normalise


class VLLMBackend:
    name = "vllm"

    def __init__(self, cfg: VLLMBackendConfig):
        try:
            import vllm  # noqa: F401
            from vllm import LLM
        except ImportError as exc:
            raise BackendError(f"the vllm backend needs vllm: pip install 'aifeedback[vllm]' ({exc})") from None
        self.cfg = cfg
        self.model_id = cfg.model
        path = str(resolve(cfg.model).path)
        kwargs = dict(
            model=path,
            enable_prefix_caching=True,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype="auto" if cfg.dtype == "auto" else cfg.dtype,
            max_logprobs=20,
        )
        if cfg.data_parallel_size > 1:
            kwargs["data_parallel_size"] = cfg.data_parallel_size
        if cfg.max_context:
            kwargs["max_model_len"] = cfg.max_context
        self.llm = LLM(**kwargs)
        self._lock = threading.Lock()
        self.tok = self.llm.get_tokenizer()
        self.max_context = self.llm.llm_engine.model_config.max_model_len
        self.capabilities = Capabilities(logprobs=True, prefix_reuse=True, in_process=True, token_counts_exact=True, max_context=self.max_context, tokenizer=True)
        self.tokenizer = ChatTokenizer(self.tok, self.render)
        self.stats = BackendStats()

    def _generate(self, *args, **kwargs):
        with self._lock:  # one engine call at a time per process (a thread runner shares the engine)
            return self.llm.generate(*args, **kwargs)

    def render(self, messages: Chat) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _fit(self, text: str, budget: int) -> tuple[dict, bool]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return {"prompt_token_ids": ids}, False
        head = budget // 4
        return {"prompt_token_ids": ids[:head] + ids[len(ids) - (budget - head) :]}, True

    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        from vllm import SamplingParams

        self.stats.generate_calls += 1
        budget = self.max_context - params.max_new_tokens
        prompts, sps, index = [], [], []
        for i, chat in enumerate(chats):
            p, trunc = self._fit(self.render(chat), budget)
            for j in range(params.n):
                prompts.append(p)
                sps.append(
                    SamplingParams(
                        temperature=params.temperature,
                        top_p=params.top_p,
                        max_tokens=params.max_new_tokens,
                        seed=None if seeds is None else int(seeds[i][j]),
                    )
                )
                index.append((i, j, trunc))
        outs = self._generate(prompts, sps, use_tqdm=False)
        results = [GenerationResult(completions=[None] * params.n) for _ in chats]  # type: ignore[list-item]
        for (i, j, trunc), o in zip(index, outs):
            c = o.outputs[0]
            results[i].completions[j] = Completion(
                text=c.text.strip(),
                prompt_tokens=len(o.prompt_token_ids),
                completion_tokens=len(c.token_ids),
                finish_reason=str(c.finish_reason or ""),
                seed=None if seeds is None else int(seeds[i][j]),
                prompt_truncated=trunc,
            )
            self.stats.tokens_generated += len(c.token_ids)
        self.stats.chats_generated += len(chats)
        return results

    def choice_probs(self, prompts: list[ScoringPrompt], candidates: list[str]) -> list[ChoiceResult]:
        from vllm import SamplingParams

        self.stats.score_calls += 1
        cand_ids = [self.tok(c, add_special_tokens=False)["input_ids"] for c in candidates]
        single = all(len(c) == 1 for c in cand_ids)
        encoded = [self._fit(self.render(p.messages) + p.answer_prefix, self.max_context - 2) for p in prompts]
        results: list[ChoiceResult] = []
        if single:
            sp = SamplingParams(temperature=0.0, max_tokens=1, logprobs=20)
            outs = self._generate([e[0] for e in encoded], sp, use_tqdm=False)
            for (enc, trunc), o in zip(encoded, outs):
                top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
                lps = [top[c[0]].logprob if c[0] in top else None for c in cand_ids]
                floor = min((v.logprob for v in top.values()), default=None)
                results.append(ChoiceResult(normalise(lps, floor=floor), lps, "logprobs", prompt_tokens=len(enc["prompt_token_ids"]), truncated=trunc))
        else:
            sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
            reqs = [{"prompt_token_ids": e[0]["prompt_token_ids"] + c} for e in encoded for c in cand_ids]
            outs = self._generate(reqs, sp, use_tqdm=False)
            k = len(candidates)
            for i, (enc, trunc) in enumerate(encoded):
                lps = []
                for j, c in enumerate(cand_ids):
                    o = outs[i * k + j]
                    n = len(enc["prompt_token_ids"])
                    total = 0.0
                    for pos, t in enumerate(c):
                        entry = o.prompt_logprobs[n + pos]
                        total += entry[t].logprob if entry and t in entry else -math.inf
                    lps.append(total if math.isfinite(total) else None)
                results.append(ChoiceResult(normalise(lps), lps, "logprobs", prompt_tokens=len(enc["prompt_token_ids"]), truncated=trunc))
        self.stats.prompts_scored += len(prompts)
        return results

    def close(self) -> None:
        pass
