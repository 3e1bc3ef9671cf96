"""Stand-in for vllm/entrypoints/llm.py (vLLM 0.33.0): the offline ``LLM`` engine, on transformers and the CPU.

Everything it returns is computed from the model it loaded (see the package docstring).
Beyond vLLM's API it keeps, for tests to read: ``engine_args`` (what ``LLM`` was given) and
``calls`` (per ``generate`` call, the (prompt token ids, SamplingParams) of each request, in
the order received).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from ..exceptions import VLLMValidationError
from ..logprobs import position_entry
from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import _SAMPLING_EPS, SamplingParams

BLOCK_SIZE = 16  # vLLM's default KV-cache block size: the prefix cache reuses whole blocks

# EngineArgs the stand-in accepts (a subset of vLLM's; another name is a TypeError, as in EngineArgs)
_ENGINE_ARGS = {
    "max_model_len", "enable_prefix_caching", "max_logprobs", "data_parallel_size", "disable_log_stats",
    "distributed_executor_backend", "block_size", "max_num_seqs", "enable_chunked_prefill",
}


class LLM:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        enforce_eager: bool = False,
        **kwargs: Any,
    ) -> None:
        for k in kwargs:
            if k not in _ENGINE_ARGS:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{k}'")
        dp = int(kwargs.get("data_parallel_size", 1))
        if dp > 1 and kwargs.get("distributed_executor_backend") != "external_launcher":
            raise ValueError(
                f"LLM(data_parallel_size={dp}) is not supported for single-process usage and may hang. Please use "
                "the explicit multi-process data-parallel example at 'examples/features/data_parallel/data_parallel_offline.py'."
            )
        if quantization is not None:
            raise NotImplementedError("the vllm stand-in does not implement quantization")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.engine_args = dict(
            model=model, tokenizer=tokenizer, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, **kwargs,
        )
        self.calls: list[list[tuple[list[int], SamplingParams]]] = []
        self._tok = AutoTokenizer.from_pretrained(tokenizer or model)
        self._model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()  # fp32 on the CPU, whatever dtype says
        # transformers renamed forward's past_key_values to cache in 5.2x
        self._cache_kw = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"
        derived = int(self._model.config.max_position_embeddings)
        max_len = kwargs.get("max_model_len") or derived
        if max_len > derived:
            raise ValueError(
                f"User-specified max_model_len ({max_len}) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived} in model's config.json)."
            )
        vocab = int(self._model.config.vocab_size)
        self._eos = self._model.generation_config.eos_token_id if self._model.generation_config.eos_token_id is not None else self._tok.eos_token_id
        model_config = SimpleNamespace(
            model=model, max_model_len=int(max_len), max_logprobs=int(kwargs.get("max_logprobs", 20)), get_vocab_size=lambda: vocab
        )
        self.llm_engine = SimpleNamespace(model_config=model_config)
        self.model_config = model_config
        self._prefix_caching = bool(kwargs.get("enable_prefix_caching", True))  # on by default for generative models in v1
        self._block = int(kwargs.get("block_size", BLOCK_SIZE))
        self._cached: set[tuple[int, ...]] = set()  # full-block prefixes some earlier request computed
        self._request_counter = 0
        self._seed = seed

    def get_tokenizer(self):
        return self._tok

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompts,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request=None,
        priority=None,
        tokenization_kwargs: dict | None = None,
        mm_processor_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        if lora_request is not None or mm_processor_kwargs is not None or tokenization_kwargs is not None:
            raise NotImplementedError("the vllm stand-in implements no LoRA, multimodal or tokenization overrides")
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
        cfg = self.llm_engine.model_config
        requests = []
        for prompt, sp in zip(prompts, params):  # everything is checked before anything runs, as vLLM validates on add_request
            text, ids = self._prompt_ids(prompt)
            if not ids:
                raise VLLMValidationError("The decoder prompt cannot be empty")
            if len(ids) > cfg.max_model_len:
                raise VLLMValidationError(
                    f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {cfg.max_model_len}. "
                    "Make sure that `max_model_len` is no smaller than the number of text tokens."
                )
            sp.validate_for_model(cfg.get_vocab_size(), cfg.max_logprobs)
            requests.append((text, ids, sp))
        self.calls.append([(list(ids), sp) for _, ids, sp in requests])
        return [self._run(text, ids, sp) for text, ids, sp in requests]

    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self._tok(prompt)["input_ids"]
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt["prompt"], self._tok(prompt["prompt"])["input_ids"]
        raise NotImplementedError(f"the vllm stand-in takes text or token prompts, got {type(prompt).__name__}")

    # ------------------------------------------------------------------ one request
    def _forward(self, ids: list[int], past=None):
        """log_softmax of the model's logits at each position of ``ids`` (after ``past``, the KV cache of what came
        before), float32, and the cache extended by ``ids``."""
        import torch

        with torch.no_grad():
            out = self._model(input_ids=torch.tensor([ids]), **{self._cache_kw: past}, use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values
        return torch.log_softmax(out.logits[0].float(), dim=-1), cache

    def _decode_token(self, t: int) -> str:
        return self._tok.convert_ids_to_tokens(int(t))

    def _entries(self, rows, tokens: list[int], k: int | None, token_ids: list[int] | None) -> list:
        """One dict per row of ``rows``: its token (scored or sampled) with its rank, then the requested ids or the top k."""
        import torch

        tok = torch.tensor(tokens)
        lps = rows.gather(1, tok[:, None])[:, 0]
        ranks = 1 + (rows > lps[:, None]).sum(-1)
        if token_ids:
            ids = torch.tensor(token_ids)
            listed = [list(zip(token_ids, r)) for r in rows[:, ids].tolist()]
        else:
            k = rows.shape[1] if k == -1 else (k or 0)
            vals, idx = rows.topk(k, dim=-1) if k else (rows[:, :0], rows[:, :0].long())
            listed = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
        return [position_entry((t, lp, r), ls, self._decode_token) for t, lp, r, ls in zip(tokens, lps.tolist(), ranks.tolist(), listed)]

    def _cached_tokens(self, ids: list[int], sp: SamplingParams) -> int:
        if not self._prefix_caching or sp.skip_reading_prefix_cache:
            return 0
        b, hit = self._block, 0
        while (hit + 1) * b <= len(ids) - 1 and tuple(ids[: (hit + 1) * b]) in self._cached:
            hit += 1
        return hit * b

    def _remember(self, ids: list[int]) -> None:
        if self._prefix_caching:
            for end in range(self._block, len(ids) + 1, self._block):
                self._cached.add(tuple(ids[:end]))

    def _run(self, text: str | None, ids: list[int], sp: SamplingParams) -> RequestOutput:
        import torch

        self._request_counter += 1
        cached = self._cached_tokens(ids, sp)
        max_len = self.llm_engine.model_config.max_model_len
        rows, prompt_past = self._forward(ids)
        prompt_lp = None
        if sp.prompt_logprobs is not None:
            prompt_lp = [None] + self._entries(rows[:-1], ids[1:], sp.prompt_logprobs, None)
        outputs = []
        for j in range(sp.n):
            gen = None
            if sp.temperature >= _SAMPLING_EPS:
                gen = torch.Generator().manual_seed(int(sp.seed) if sp.seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
            seq, out_ids, out_lps, cum, finish = list(ids), [], [], 0.0, None
            num_lp = sp.num_logprobs
            row, past = rows[-1], (copy.deepcopy(prompt_past) if sp.n > 1 else prompt_past)
            while finish is None:
                if out_ids:
                    step, past = self._forward([out_ids[-1]], past)
                    row = step[-1]
                tok = self._sample(row, sp, gen)
                if num_lp is not None:
                    out_lps.extend(self._entries(row[None], [tok], num_lp, sp.logprob_token_ids))
                    cum += float(row[tok])
                out_ids.append(tok)
                seq.append(tok)
                if tok == self._eos and not sp.ignore_eos:
                    finish = "stop"
                elif len(out_ids) >= (sp.max_tokens or max_len) or len(seq) >= max_len:
                    finish = "length"
            outputs.append(
                CompletionOutput(
                    index=j,
                    text=self._tok.decode(out_ids, skip_special_tokens=sp.skip_special_tokens) if sp.detokenize else "",
                    token_ids=out_ids,
                    cumulative_logprob=cum if num_lp is not None else None,
                    logprobs=out_lps if num_lp is not None else None,
                    finish_reason=finish,
                    stop_reason=None,
                )
            )
        self._remember(ids)
        return RequestOutput(str(self._request_counter), text, list(ids), prompt_lp, outputs, True, num_cached_tokens=cached)

    @staticmethod
    def _sample(row, sp: SamplingParams, gen) -> int:
        import torch

        if gen is None:  # greedy
            return int(row.argmax())
        logits = row / sp.temperature
        if sp.top_k and sp.top_k > 0:
            kth = logits.topk(sp.top_k).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, -math.inf), logits)
        probs = torch.softmax(logits, -1)
        if sp.top_p < 1.0:
            sp_sorted, order = probs.sort(descending=True)
            keep = (sp_sorted.cumsum(-1) - sp_sorted) < sp.top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
        return int(torch.multinomial(probs, 1, generator=gen)[0])
