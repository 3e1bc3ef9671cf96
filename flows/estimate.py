"""Estimate a stage before spending: the tokens it would send, their cost, and the time under the rate limits.

The stage's own code builds every request (the same job, items, batches and
prompts as the real run) against a :class:`CountingBackend`, which counts and calls
no model. Items already in the run store are reused by the real run, so they cost
nothing here either.

Counting is exact with a local tokenizer: the transformers backend's own, or the
``--tokenizer`` given for an endpoint (the served model's tokenizer and chat template).
Without one it is approximate, at about 4 characters a token. Completion tokens are
an upper bound: ``max_new_tokens`` per generated sample (scoring on an endpoint: the
few tokens it asks for). When a stage feeds generated text into later prompts
(revise rounds, CoT rationales) those prompts are counted without that text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifeedback.backends.base import (
    BackendStats,
    Capabilities,
    ChatTokenizer,
    ChoiceResult,
    Completion,
    GenerationResult,
)
from aifeedback.batches import Excluded, item_key, key_prefix
from aifeedback.config import (
    BackendConfig,
    GenerateConfig,
    LabelConfig,
    ReviseConfig,
    SamplingConfig,
    build_config,
)
from aifeedback.errors import ConfigError
from aifeedback.stage import backend_override
from aifeedback.store import RunStore
from aifeedback.usage import cost

SCORE_COMPLETION_TOKENS = {"openai": 4}  # max_tokens the openai backend asks for when scoring; in-process scoring generates none
CHARS_PER_TOKEN = 4


class TokenCounter:
    """Counts chats as a model would see them: exact with a tokenizer, else about 4 characters a token."""

    def __init__(self, tokenizer_id: str | None):
        self.tok = None
        self.method = f"approximate: {CHARS_PER_TOKEN} characters a token, plus 4 a message (no local tokenizer; pass --tokenizer for exact counts)"
        if tokenizer_id:
            from transformers import AutoTokenizer

            from aifeedback.models import resolve

            path = resolve(tokenizer_id).path
            tok = AutoTokenizer.from_pretrained(str(path))
            self.tok = ChatTokenizer(tok, lambda m: tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) if getattr(tok, "chat_template", None) else "".join(f"{x['role']}: {x['content']}\n" for x in m) + "assistant: ")
            self.method = f"exact: the tokenizer and chat template of {tokenizer_id}"

    @property
    def exact(self) -> bool:
        return self.tok is not None

    def chat(self, messages: list[dict], suffix: str = "") -> int:
        if self.tok is not None:
            return len(self.tok.encode(self.tok.render(messages) + suffix))
        return (sum(len(str(m.get("content") or "")) for m in messages) + len(suffix)) // CHARS_PER_TOKEN + 4 * len(messages)


class CountingBackend:
    """A dry run of a backend: it sees every request the stage makes, counts it, and calls no model.

    It has the real backend's capabilities (an endpoint has no tokenizer, so prompts are
    cut by characters exactly as in the real run). Its answers are placeholders that are
    never stored: the estimate discards the rows.
    """

    def __init__(self, cfg: BackendConfig, counter: TokenCounter):
        self.cfg, self.counter = cfg, counter
        self.name = cfg.kind
        self.model_id = cfg.model
        self.stats = BackendStats()
        local = cfg.kind == "transformers"
        if local and not counter.exact:
            raise ConfigError("estimating a transformers stage needs its tokenizer: pass --tokenizer with the backend's model")
        self.capabilities = Capabilities(logprobs=getattr(cfg, "top_logprobs", 1) > 0, prefix_reuse=True, in_process=local, token_counts_exact=counter.exact, tokenizer=local)
        self.tokenizer = counter.tok if local else None
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self._answer_prefix = local  # in-process backends append the answer prefix; endpoints get it inside the instruction

    def generate(self, chats, params: SamplingConfig, seeds=None) -> list[GenerationResult]:
        out = []
        for chat in chats:
            n_prompt = self.counter.chat(chat)
            self.requests += params.n
            self.prompt_tokens += n_prompt * params.n
            self.completion_tokens += params.max_new_tokens * params.n
            out.append(GenerationResult([Completion("", n_prompt, params.max_new_tokens, "length") for _ in range(params.n)]))
        return out

    def choice_probs(self, prompts, candidates) -> list[ChoiceResult]:
        out = []
        for p in prompts:
            n = self.counter.chat(p.messages, p.answer_prefix if self._answer_prefix else "")
            self.requests += 1
            self.prompt_tokens += n
            self.completion_tokens += SCORE_COMPLETION_TOKENS.get(self.name, 0)
            k = len(candidates)
            out.append(ChoiceResult([1.0 / k] * k, [None] * k, "logprobs", prompt_tokens=n))
        return out

    def close(self) -> None:
        pass


def _stage(stage: str, run_dir: str, config_path: str | None, overrides: dict | None, labeler: str | None = None):
    """The stage's config, job and input items, as its command builds them."""
    store = RunStore(run_dir, probe=False)
    if stage == "label":
        from labelers.stage import build_label_stage

        if labeler not in (None, "llm"):
            raise ConfigError(f"estimate counts what an LLM judge is sent; a reward model labeler ({labeler}) sends no requests and costs no tokens")
        cfg = build_config(LabelConfig, config_path, overrides)
        built = build_label_stage(store, cfg)
        return cfg, built.job, built.items
    if stage == "generate":
        from aifeedback.generation import GenerateJob, load_prompts

        from .generate import default_input

        cfg = build_config(GenerateConfig, config_path, overrides)
        items, _ = load_prompts(default_input(cfg), cfg.prompt_column, cfg.id_column, cfg.limit)
        return cfg, GenerateJob(cfg), items
    if stage == "revise":
        from aifeedback.revision import ReviseJob

        cfg = build_config(ReviseConfig, config_path, overrides)
        items = store.read_table("responses").to_pylist()
        return cfg, ReviseJob(cfg), items[: cfg.limit] if cfg.limit else items
    raise ConfigError(f"unknown stage {stage!r}; estimate label, generate or revise")


def estimate(stage: str, run_dir: str = "runs/default", config_path: str | None = None, overrides: dict | None = None, tokenizer: str | None = None, labeler: str | None = None) -> dict:
    """Tokens, cost and time a stage would take, with no model call."""
    cfg, job, items = _stage(stage, run_dir, config_path, overrides, labeler)
    bcfg = cfg.backend
    if tokenizer is None and bcfg.kind == "transformers":
        tokenizer = bcfg.model  # the model's own tokenizer: exact
    counter = TokenCounter(tokenizer)
    counting = CountingBackend(bcfg, counter)
    store_dir = Path(run_dir) / job.stage
    index = RunStore(run_dir, probe=False).item_index(job.stage)[0] if store_dir.is_dir() else {}
    prefix = key_prefix(job)
    todo: list[Any] = []
    n_in = n_reused = n_input_excluded = 0
    for it in items:
        n_in += 1
        if isinstance(it, Excluded):
            n_input_excluded += 1
            continue
        if item_key(prefix, it) in index:
            n_reused += 1
        else:
            todo.append(it)
    with backend_override(bcfg, counting):
        for s in range(0, len(todo), cfg.batch_size):
            job.compute(todo[s : s + cfg.batch_size], f"estimate-{s}")  # the stage's own request building; rows discarded
    tokens = counting.prompt_tokens + counting.completion_tokens
    rpm, tpm = getattr(bcfg, "requests_per_minute", None), getattr(bcfg, "tokens_per_minute", None)
    limits = [counting.requests / rpm * 60 if rpm else None, tokens / tpm * 60 if tpm else None]
    bound = [x for x in limits if x is not None]
    return {
        "stage": job.stage,
        "backend": bcfg.kind,
        "model": bcfg.model,
        "items": n_in,
        "items_reused": n_reused,
        "items_excluded_on_input": n_input_excluded,
        "items_to_compute": len(todo),
        "requests": counting.requests,
        "prompt_tokens": counting.prompt_tokens,
        "completion_tokens_max": counting.completion_tokens,
        "tokens": tokens,
        "token_method": counter.method,
        "cost_usd": cost(bcfg.prices, bcfg.model, counting.prompt_tokens, counting.completion_tokens),  # synchronous
        "cost_usd_batch": cost(bcfg.prices, bcfg.model, counting.prompt_tokens, counting.completion_tokens, batch=True),  # through the Batch API (backend.batch)
        "seconds_at_rate_limits": round(max(bound), 1) if bound else None,
        "time_note": "the slower of requests/RPM and tokens/TPM" if bound else "no rate limit configured: bounded by the endpoint's speed",
    }
