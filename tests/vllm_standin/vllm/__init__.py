"""A STAND-IN for the ``vllm`` package, for tests only. It is not vLLM.

The real engine cannot run here (no GPU, and no vllm wheel for this machine), so
``tests/test_backend_vllm.py`` puts this folder first on ``sys.path`` and the
project's vllm backend imports this package as ``vllm``. It has the names, signatures,
validation messages and output shapes of the vLLM 0.33.0 API that
``aifeedback/backends/vllm_engine.py`` calls, taken from the 0.33.0 wheel (and
0.19.0, 0.19.1 and 0.20.0 for what changed):

- ``vllm/entrypoints/llm.py``: ``LLM(model, ..., **engine_args)``, ``LLM.generate(prompts,
  sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
  tokenization_kwargs=None, mm_processor_kwargs=None) -> list[RequestOutput]``,
  ``LLM.get_tokenizer()``, ``LLM.llm_engine.model_config.max_model_len``, and the refusal of
  ``LLM(data_parallel_size>1)`` in one process (in 0.19.0 to 0.33.0).
- ``vllm/sampling_params.py``: ``SamplingParams`` (a msgspec Struct there: unknown keywords
  are a ``TypeError``, its fields are in ``__struct_fields__``). ``logprob_token_ids`` first
  appears in 0.20.0 (vLLM PR #34539, "Generative Scoring", merged 2026-03-31; absent from
  0.19.0 and 0.19.1). ``truncate_prompt_tokens`` is no longer a field in 0.19.0 to 0.33.0.
- ``vllm/outputs.py``: ``RequestOutput`` (``prompt_token_ids``, ``prompt_logprobs``,
  ``outputs``, ``num_cached_tokens``) and ``CompletionOutput`` (``text``, ``token_ids``,
  ``cumulative_logprob``, ``logprobs``, ``finish_reason``, ``stop_reason``).
- ``vllm/logprobs.py``: ``Logprob(logprob, rank, decoded_token)``; prompt log-probs are a list
  whose first entry is ``None``; each later entry (and each generated position) is a dict
  token id -> ``Logprob`` holding the scored or sampled token first, with its true rank,
  then the top ``k`` tokens with ranks ``1..k``, or the ``logprob_token_ids`` with ranks
  ``1..n`` (vllm/logprobs.py ``append_logprobs_for_next_position`` numbers them so, it
  does not rank them).
- ``vllm/exceptions.py``: ``VLLMValidationError(ValueError)``.

What it computes is real, not canned: ``LLM`` loads the model folder with transformers
and runs it in float32 on the CPU, so every log-prob is ``log_softmax`` of the model's own
logits (vLLM's default ``logprobs_mode="raw_logprobs"``). Sampling is greedy at
temperature 0, otherwise temperature and top-p with a per-request ``torch.Generator``
seeded from ``seed`` (real vLLM draws other numbers for the same seed).

Automatic prefix caching is emulated for its accounting only: blocks of 16 tokens
(vLLM's default block size) that an earlier request computed are counted in
``num_cached_tokens`` (never the whole prompt: its last token is always computed), and a
request with ``prompt_logprobs`` does not read the cache (``skip_reading_prefix_cache``
defaults to True then). Requests run one after another, so a request finds every block
an earlier one computed; real vLLM schedules many at once, and a request scheduled in
the same step as the one that computes a block misses it.

Anything the backend does not use (LoRA, multimodal inputs, stop strings, penalties,
``LLM.chat``, streaming ...) is absent or raises ``NotImplementedError``, so a test
cannot pass on a setting this stand-in silently ignored.
"""

from .entrypoints.llm import LLM
from .exceptions import VLLMValidationError
from .logprobs import Logprob
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

__version__ = "0.33.0"  # the release this stand-in is shaped on

STANDIN = True  # not in real vLLM: lets a test assert it is talking to this stand-in

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "VLLMValidationError", "__version__"]
