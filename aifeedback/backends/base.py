"""The one backend protocol every model runner implements.

Callers read :class:`Capabilities` instead of checking types. Failures of single
items never raise: they come back as results with ``error`` set (and ``raw``
kept), so a stage can turn them into exclusion rows. Whole-backend failures
(a model that cannot load, a server that is gone) raise :class:`BackendError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..config import SamplingConfig, overlong_refusal
from ..errors import ConfigError

Chat = list[dict]  # [{"role": ..., "content": ...}, ...]


@dataclass(slots=True)
class Capabilities:
    logprobs: bool  # choice_probs reads real log-probabilities (else parsed hard verdicts)
    prefix_reuse: bool  # shared prompt prefixes are computed once (KV reuse or server prefix cache)
    in_process: bool  # runs in this process: do not fan out over threads
    token_counts_exact: bool  # prompt/completion token counts come from the model's tokenizer
    max_context: int | None = None
    tokenizer: bool = False  # ``backend.tokenizer`` can count and cut text exactly (else lengths are approximate)


class Tokenizer(Protocol):
    """The model's own tokenizer, for exact lengths and truncation (``Backend.tokenizer``)."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def count_chat(self, messages: Chat) -> int: ...  # tokens of the rendered chat, generation prompt included


class ChatTokenizer:
    """A :class:`Tokenizer` over a Hugging Face tokenizer and a chat renderer."""

    __slots__ = ("tok", "render")

    def __init__(self, tok, render):
        self.tok, self.render = tok, render

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def count_chat(self, messages: Chat) -> int:
        return len(self.encode(self.render(messages)))


@dataclass(slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or the server's word
    seed: int | None = None
    prompt_truncated: bool = False


@dataclass(slots=True)
class GenerationResult:
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None  # set when the chat failed after retries; completions is then empty
    retries: int = 0


@dataclass(slots=True)
class ScoringPrompt:
    """A chat to score, plus the text the answer starts with (e.g. "Preferred response: ").

    In-process backends append ``answer_prefix`` after the assistant header and read
    the next-token distribution there; chat endpoints get it as the instruction's end.
    """

    messages: Chat
    answer_prefix: str = ""
    tag: str = ""  # its place in the item (e.g. "AB", the order shown): batch mode's custom_id is ITEMKEY:TAG


@dataclass(slots=True)
class ChoiceResult:
    probs: list[float] | None  # normalised over the candidates; None when nothing could be read
    logprobs: list[float | None]  # raw log-probabilities of each candidate (None: not in top_logprobs)
    source: str  # "logprobs", "parsed" (hard verdict from text), "unparseable" (a reply with no readable verdict) or "error" (the request failed)
    raw: str | None = None  # generated text when parsed, or the failing reply
    error: str | None = None
    prompt_tokens: int = 0
    truncated: bool = False
    retries: int = 0


@dataclass(slots=True)
class BackendStats:
    generate_calls: int = 0  # calls of generate()
    score_calls: int = 0  # calls of choice_probs()
    chats_generated: int = 0
    prompts_scored: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    retries: int = 0


@runtime_checkable
class Backend(Protocol):
    name: str
    model_id: str
    capabilities: Capabilities
    stats: BackendStats
    tokenizer: Tokenizer | None  # set when capabilities.tokenizer

    def generate(self, chats: list[Chat], params: SamplingConfig, seeds: list[list[int]] | None = None) -> list[GenerationResult]:
        """n completions for each chat (``params.n``); ``seeds[i][j]`` seeds completion j of chat i."""
        ...

    def choice_probs(self, prompts: list[ScoringPrompt], candidates: list[str]) -> list[ChoiceResult]:
        """Probability of each candidate continuation, normalised over the candidates."""
        ...

    def close(self) -> None: ...


def require_tokenizer(backend: "Backend", overlong: str) -> None:
    """``overlong: exclude`` needs exact token counts: refuse it on a backend without a tokenizer."""
    if overlong == "exclude" and not backend.capabilities.tokenizer:
        raise ConfigError(overlong_refusal(backend.name))


def candidate_variants(encode, candidates: list[str]) -> list[list[list[int]]]:
    """Token sequences that spell each candidate, as written and with a leading space (``encode``: text -> token ids).

    The in-process backends score a candidate as the sum over its spellings, so "1" and " 1" count alike.
    """
    from ..errors import BackendError

    out = []
    for c in candidates:
        seqs: list[list[int]] = []
        for text in (c, " " + c.lstrip()):
            t = encode(text)
            if t and t not in seqs:
                seqs.append(t)
        if not seqs:
            raise BackendError(f"candidate {c!r} encodes to no tokens")
        out.append(seqs)
    return out


def normalise(logprobs: list[float | None], floor: float | None = None) -> list[float] | None:
    """Softmax over candidates' log-probs; missing ones get ``floor`` (or are dropped to 0 if floor is None)."""
    vals = [lp if lp is not None else floor for lp in logprobs]
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return None
    m = max(finite)
    exps = [math.exp(v - m) if v is not None and math.isfinite(v) else 0.0 for v in vals]
    s = sum(exps)
    return [e / s for e in exps]


def derive_seed(base: int, *parts: object) -> int:
    """Deterministic 31-bit seed for (base, parts...)."""
    import hashlib

    h = hashlib.sha256(repr((base,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def parse_choice(text: str, candidates: list[str]) -> int | None:
    """Index of the candidate a free-text answer names first, or None."""
    import re

    stripped = text.strip()
    # whole-token matches, longest candidates first so "10" wins over "1"
    order = sorted(range(len(candidates)), key=lambda i: -len(candidates[i]))
    best: tuple[int, int] | None = None
    for i in order:
        m = re.search(rf"(?<![\w]){re.escape(candidates[i].strip())}(?![\w])", stripped)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), i)
    return None if best is None else best[1]
