"""Stand-in for vllm/sampling_params.py (vLLM 0.33.0): ``SamplingParams``.

The public fields and defaults are 0.33.0's. Real vLLM's class is a msgspec Struct: an
unknown keyword is ``TypeError: Unexpected keyword argument 'x'`` and the fields are listed
in ``__struct_fields__``; a test emulates a release without ``logprob_token_ids`` (before
0.20.0) by taking it out of that tuple. Argument checks and messages are 0.33.0's
``_verify_args``; the checks that need the model (``_validate_logprobs``) run in
``LLM.generate``, as in vLLM's input processor.
"""

from .exceptions import VLLMValidationError

_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2
MAX_LOGPROB_TOKEN_IDS = 128  # upper bound on len(logprob_token_ids)

_DEFAULTS: dict = {
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "watermarking": None,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "max_tokens": 16,
    "min_tokens": 0,
    "logprobs": None,
    "prompt_logprobs": None,
    "prompt_logprob_token_ids": None,
    "prompt_logprob_start": None,
    "logprob_token_ids": None,
    "flat_logprobs": False,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "include_stop_str_in_output": False,
    "output_kind": None,
    "stream_interval": None,
    "skip_clone": False,
    "structured_outputs": None,
    "logit_bias": None,
    "allowed_token_ids": None,
    "extra_args": None,
    "bad_words": None,
    "skip_reading_prefix_cache": None,
    "thinking_token_budget": None,
    "repetition_detection": None,
    "routed_experts_prompt_start": 0,
    "trace_decode_token_ids": None,
}

# Settings the stand-in does not implement: setting one raises, so nothing is silently ignored.
_UNIMPLEMENTED = (
    "presence_penalty", "frequency_penalty", "repetition_penalty", "watermarking", "min_p", "stop", "stop_token_ids",
    "min_tokens", "prompt_logprob_token_ids", "prompt_logprob_start", "flat_logprobs", "include_stop_str_in_output",
    "output_kind", "stream_interval", "structured_outputs", "logit_bias", "allowed_token_ids", "bad_words",
    "thinking_token_budget", "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids",
)


class SamplingParams:
    """Sampling parameters for text generation (the stand-in's copy of vLLM's)."""

    __struct_fields__: tuple[str, ...] = tuple(_DEFAULTS)

    def __init__(self, **kwargs) -> None:
        for k in kwargs:
            if k not in type(self).__struct_fields__:
                raise TypeError(f"Unexpected keyword argument '{k}'")
        for k, default in _DEFAULTS.items():
            setattr(self, k, kwargs.get(k, default))
        for k in _UNIMPLEMENTED:
            if k in kwargs and kwargs[k] != _DEFAULTS[k] and not (k == "stop" and kwargs[k] == []):
                raise NotImplementedError(f"the vllm stand-in does not implement SamplingParams({k}=...)")
        self._post_init()

    def _post_init(self) -> None:
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = max(self.temperature, _MAX_TEMP)
        if self.seed == -1:
            self.seed = None
        if self.logprobs is True:
            self.logprobs = 1
        if self.prompt_logprobs is True:
            self.prompt_logprobs = 1
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:  # zero temperature means greedy sampling
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.skip_reading_prefix_cache is None:
            # with prefix caching the prompt logprobs would come back short: such a request recomputes its prompt
            self.skip_reading_prefix_cache = self.prompt_logprobs is not None or self.prompt_logprob_token_ids is not None

    def _verify_args(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.")
        if self.temperature < 0.0:
            raise VLLMValidationError(f"temperature must be non-negative, got {self.temperature}.", parameter="temperature", value=self.temperature)
        if self.temperature > 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.", parameter="temperature", value=self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p", value=self.top_p)
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens", value=self.max_tokens)
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise VLLMValidationError(f"logprobs must be non-negative or -1, got {self.logprobs}.", parameter="logprobs", value=self.logprobs)
        if self.prompt_logprobs is not None and self.prompt_logprobs != -1 and self.prompt_logprobs < 0:
            raise VLLMValidationError(f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.", parameter="prompt_logprobs", value=self.prompt_logprobs)

    @property
    def num_logprobs(self) -> int | None:
        """Sample log-probs per output token (``logprobs``, else ``len(logprob_token_ids)``), or None."""
        if self.logprobs is not None:
            return self.logprobs
        return len(self.logprob_token_ids) if self.logprob_token_ids else None

    def validate_for_model(self, vocab_size: int, max_logprobs: int) -> None:
        """vLLM's ``SamplingParams._validate_logprobs`` (run by the engine, which knows the model)."""
        if max_logprobs == -1:
            max_logprobs = vocab_size
        if num := self.logprobs:
            num = vocab_size if num == -1 else num
            if num > max_logprobs:
                raise VLLMValidationError(f"Requested sample logprobs of {num}, which is greater than max allowed: {max_logprobs}", parameter="logprobs", value=num)
        if self.logprob_token_ids is not None:
            n = len(self.logprob_token_ids)
            if n > MAX_LOGPROB_TOKEN_IDS:
                raise VLLMValidationError(f"Requested logprob_token_ids of length {n}, which is greater than max allowed: {MAX_LOGPROB_TOKEN_IDS}", parameter="logprob_token_ids", value=n)
            bad = [t for t in self.logprob_token_ids if t < 0 or t >= vocab_size]
            if bad:
                raise VLLMValidationError(f"token_id(s) {bad} in logprob_token_ids contain out-of-vocab token ids. Vocabulary size: {vocab_size}", parameter="logprob_token_ids", value=bad)
            if self.logprobs is not None and self.logprobs != n:
                raise VLLMValidationError(
                    f"When both logprobs and logprob_token_ids are set, logprobs must equal len(logprob_token_ids). Got logprobs={self.logprobs}, len(logprob_token_ids)={n}.",
                    parameter="logprob_token_ids",
                    value=n,
                )
        if num := self.prompt_logprobs:
            num = vocab_size if num == -1 else num
            if num > max_logprobs:
                raise VLLMValidationError(f"Requested prompt logprobs of {num}, which is greater than max allowed: {max_logprobs}", parameter="prompt_logprobs", value=num)

    def __repr__(self) -> str:
        changed = {k: getattr(self, k, None) for k in _DEFAULTS if getattr(self, k, _DEFAULTS[k]) != _DEFAULTS[k]}
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
