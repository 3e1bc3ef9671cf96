"""Backend configs: one model per backend kind behind a discriminated union (a stage's ``backend`` section)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from .config_base import Setting, StrictModel, affects_output
from .models import DEFAULT_POLICY


class ModelPrice(StrictModel):
    """What one model costs, in US dollars per million tokens."""

    input: float = Field(ge=0, description="USD per million prompt (input) tokens.")
    output: float = Field(ge=0, description="USD per million completion (output) tokens.")
    batch_input: float | None = Field(None, ge=0, description="USD per million prompt tokens sent through the Batch API (backend.batch); default: half of input, the discount OpenAI gives.")
    batch_output: float | None = Field(None, ge=0, description="USD per million completion tokens through the Batch API (backend.batch); default: half of output.")

    def rates(self, batch: bool) -> tuple[float, float]:
        """(input, output) USD per million tokens, synchronous or through the Batch API."""
        if not batch:
            return self.input, self.output
        return (self.input * BATCH_DISCOUNT if self.batch_input is None else self.batch_input, self.output * BATCH_DISCOUNT if self.batch_output is None else self.batch_output)


BATCH_DISCOUNT = 0.5  # a Batch API price where the table gives only the synchronous one


BUILTIN_BACKENDS = ("transformers", "openai", "vllm")
# keys of the tools around a run, not of an endpoint: never a backend.api_key_env
TOOL_KEYS = frozenset({"WANDB_API_KEY", "PREFECT_API_KEY", "COMET_API_KEY", "NEPTUNE_API_KEY"})
_PLUGIN_KIND = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class BackendConfig(StrictModel):
    """Settings every backend takes; each backend kind has its own model that adds its settings.

    ``BackendConfig(**settings)`` builds the model for ``settings["kind"]``
    (``transformers`` by default), so a key of another backend is an error.
    """

    KIND: ClassVar[str | None] = None  # the kind a subclass is for; None: any module:Class

    kind: str = Setting(
        "transformers",
        affects_output=True,
        description="Which backend runs the model: transformers (in-process), openai (any OpenAI-compatible endpoint), vllm (offline engine), or module:Class for your own class implementing the backend protocol.",
    )
    model: str = Setting(DEFAULT_POLICY, affects_output=True, description="Model id: an embedded name, a local folder or a Hugging Face id (the served model name for openai).")
    max_context: int | None = Setting(None, affects_output=True, ge=16, description="Context length in tokens; default is the model's.")
    prices: dict[str, ModelPrice] = Setting(
        default_factory=dict,
        affects_output=False,
        description="Price table, per model id: {MODEL: {input: USD, output: USD}} per million tokens. Runs record their cost at these prices; when given, it must price backend.model.",
    )

    def __new__(cls, *args: Any, **data: Any):
        if cls is BackendConfig:  # the base names no backend: build the one the settings ask for
            cls = backend_config_class(data.get("kind", "transformers"))
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):  # type: ignore[override]
        if cls is BackendConfig:
            return _BACKEND_ADAPTER.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" not in data:
            if cls.KIND is None:
                raise ValueError("a backend of your own needs kind: package.module:Class")
            data = {**data, "kind": cls.KIND}
        return data

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if cls.KIND is None:
            if v in BUILTIN_BACKENDS or not _PLUGIN_KIND.fullmatch(v):
                raise ValueError(f"backend kind must be transformers, openai, vllm or module:Class (an importable backend class), got {v!r}")
        elif v != cls.KIND:
            raise ValueError(f"{cls.__name__} is the config of the {cls.KIND} backend, got kind {v!r}; build BackendConfig(kind={v!r}, ...) instead")
        return v

    @model_validator(mode="after")
    def _priced(self):
        if self.prices and self.model not in self.prices:
            raise ValueError(
                f"backend.prices has no entry for model {self.model!r} (it prices {sorted(self.prices)}); "
                f"add {self.model}: {{input: USD, output: USD}} under backend.prices, or fix the model name"
            )
        return self

    def identity(self) -> dict:
        """Every setting that can change a model output (batch keys and provenance hold it); see ``Setting``."""
        return {name: getattr(self, name) for name, f in type(self).model_fields.items() if affects_output(f)}


def _dtype() -> Any:
    return Setting("float32", affects_output=True, description="transformers/vllm: weight dtype. Stay in float32 on CPUs without bf16 units.")


class TransformersBackendConfig(BackendConfig):
    """In-process transformers backend (the default)."""

    KIND: ClassVar[str | None] = "transformers"

    # device: "auto" is recorded as given, and CPU and GPU kernels differ in the last bits, so it counts as output-affecting
    device: str = Setting("auto", affects_output=True, description="transformers: torch device; auto picks cuda when present, else cpu.")
    dtype: Literal["device", "float32", "bfloat16", "float16", "auto"] = Setting(
        "device",
        affects_output=True,
        description="transformers: weight dtype. device: float32 on CPU, bfloat16 on a GPU with bf16 units (float32 on one without); auto: the checkpoint's. Keys and provenance hold the dtype it resolves to.",
    )
    num_threads: int | None = Setting(None, affects_output=False, ge=1, description="transformers: torch intra-op threads; default is the number of cores.")
    # batch shapes and the scoring strategy change the padding and the order of float sums only:
    # outputs agree to float noise (tests/test_backend_transformers.py), so they are performance knobs
    gen_batch_size: int = Setting(32, affects_output=False, ge=1, le=1024, description="Chats decoded together in one batch (32 was fastest on a 2-core CPU: docs/performance.md). On a GPU, unless set, sized by the device's free memory (up to 1,024).")
    score_batch_size: int = Setting(32, affects_output=False, ge=1, le=4096, description="transformers: scoring prompts evaluated together.")
    score_strategy: Literal["auto", "grouped", "varlen", "batched"] = Setting("auto", affects_output=False, description="transformers: varlen lays many pairs' tokens end to end in one forward pass, so the matrix products are large, and runs attention per pair over the shared prefix (no padding, no cross-pair attention; the CPU default for Llama-architecture models, else grouped); grouped scores each pair's orders together after a shared prefix, one pair per pass; batched pads many prompts into one pass (best on GPU); auto picks by device. All give the same probabilities (to 1e-5; docs/performance.md).")
    score_batch_tokens: int = Setting(12288, affects_output=False, ge=256, description="transformers: most padded prompt tokens in one scoring forward pass.")
    _dtype_resolved: str | None = PrivateAttr(None)  # what dtype "device" resolved to, kept (and pickled) with the config


    def resolved_dtype(self) -> str:
        """The dtype the weights load in: ``device`` resolved on first use (torch is imported only off CPU) and kept,
        so a config keyed on one machine loads as keyed on another (a stage driver keys, a Ray worker loads)."""
        if self.dtype != "device":
            return self.dtype
        if self._dtype_resolved is None:
            if self.device == "cpu":
                self._dtype_resolved = "float32"
            else:
                import torch

                cuda = torch.cuda.is_available() and (self.device == "auto" or self.device.startswith("cuda"))
                self._dtype_resolved = "bfloat16" if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
        return self._dtype_resolved

    def identity(self) -> dict:
        return {**super().identity(), "dtype": self.resolved_dtype()}


class OpenAIBackendConfig(BackendConfig):
    """Any OpenAI-compatible endpoint (vLLM serve, llama.cpp server, hosted APIs)."""

    KIND: ClassVar[str | None] = "openai"

    base_url: str | None = Setting(None, affects_output=True, description="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1.")  # another server may serve other weights under the same name
    api_key_env: str = Setting(
        "OPENAI_API_KEY",
        affects_output=False,
        description="openai: name of the environment variable holding the key sent to base_url: OPENAI_API_KEY or another name ending in _API_KEY (TOGETHER_API_KEY...). Other variables (HF_TOKEN, GITHUB_TOKEN, AWS_...) and tools' keys (WANDB_API_KEY...) are refused, so a config from someone else cannot send them to its URL. Keys are never read from files.",
    )
    allow_insecure_key: bool = Setting(
        False,
        affects_output=False,
        description="openai: send the key over plain http:// to a host other than this machine (127.0.0.0/8, ::1, localhost), where anyone on the network path can read it. Prefer https://.",
    )
    max_concurrency: int = Setting(8, affects_output=False, ge=1, le=512, description="openai: requests in flight at once.")
    timeout_s: float = Setting(60.0, affects_output=False, gt=0, description="openai: timeout for every request, in seconds.")
    max_retries: int = Setting(5, affects_output=False, ge=0, le=50, description="openai: retries on 429, 5xx, resets, timeouts and malformed replies.")
    backoff_base_s: float = Setting(0.5, affects_output=False, ge=0, description="openai: first backoff delay; doubles each retry, with full jitter.")
    backoff_max_s: float = Setting(20.0, affects_output=False, ge=0, description="openai: longest single backoff delay (Retry-After is honoured up to this).")
    top_logprobs: int = Setting(20, affects_output=True, ge=0, le=20, description="openai: top_logprobs requested when scoring; 0 means the endpoint has none.")
    requests_per_minute: float | None = Setting(None, affects_output=False, gt=0, description="openai: request budget of the endpoint (RPM); requests are paced to stay under it. Default: no budget.")
    tokens_per_minute: float | None = Setting(None, affects_output=False, gt=0, description="openai: token budget of the endpoint (TPM, prompt + completion); requests are paced to stay under it. Default: no budget.")
    adaptive_concurrency: bool = Setting(True, affects_output=False, description="openai: adapt the requests in flight (AIMD, at most max_concurrency): halve on 429 or exhausted rate-limit headers, grow by one per window of successes. False keeps max_concurrency fixed.")
    # Batch mode (aifeedback/batch_api.py): the same requests, sent as batch files instead of one at a time; rows are the same
    batch: bool = Setting(False, affects_output=False, description="openai: send the stage's requests through the endpoint's Batch API (files.create purpose=batch, batches.create, 24 h window) instead of one at a time: half the price at OpenAI, limits apart from the synchronous ones, results within the window. The run records every batch before it polls; a re-run or a crash polls the same batches again and never resubmits. Rows equal the synchronous path's and record batch_id.")
    batch_file_only: bool = Setting(False, affects_output=False, description="openai: write the stage's batch request files (RUN/batch_api/STAGE/*.requests.jsonl) and stop, sending nothing: run them elsewhere (vllm run-batch -i FILE -o OUT, or the Batch API by hand), then `aifeedback import-batch-output OUT... --run-dir RUN`.")
    batch_max_requests: int = Setting(50_000, affects_output=False, ge=1, description="openai batch mode: most requests in one batch file (the OpenAI Batch API allows 50,000); more are split into several files and batches.")
    batch_max_bytes: int = Setting(200_000_000, affects_output=False, ge=1024, description="openai batch mode: largest batch file in bytes (the OpenAI Batch API allows 200 MB; a larger upload fails with HTTP 413); more are split into several files and batches.")
    batch_poll_s: float = Setting(30.0, affects_output=False, gt=0, description="openai batch mode: seconds between polls of the open batches.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        if v is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(v)
            if parts.username or parts.password or re.search(r"(?i)(key|token|secret|password)=", parts.query):
                raise ValueError("base_url must not carry credentials (they would be written to configs and logs); put the key in an environment variable named by backend.api_key_env")
        return v.rstrip("/") if v else v

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, v: str) -> str:
        if not v.upper().endswith("_API_KEY") or v.upper() in TOOL_KEYS:
            raise ValueError(
                f"api_key_env must name an endpoint's key, OPENAI_API_KEY or another variable ending in _API_KEY (not a tool's: {', '.join(sorted(TOOL_KEYS))}), got {v!r}; "
                "it is sent to base_url, so a config could otherwise send any secret in your environment there. "
                "Copy the endpoint's key into such a variable (export MY_ENDPOINT_API_KEY=...) and set `backend.api_key_env` to its name"
            )
        return v


class VLLMBackendConfig(BackendConfig):
    """vLLM's offline engine (GPUs)."""

    KIND: ClassVar[str | None] = "vllm"

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = _dtype()
    # tensor parallelism splits every matmul across GPUs: the reduction order, and so the last bits, change
    tensor_parallel_size: int = Setting(1, affects_output=True, ge=1, description="vllm: GPUs per model replica (tensor parallel).")
    data_parallel_size: int = Setting(1, affects_output=False, ge=1, description="vllm: keep 1; one engine per process is one replica (vLLM refuses more in one process), so run replicas as workers: --runner ray --workers N.")
    gpu_memory_utilization: float = Setting(0.9, affects_output=False, gt=0, le=1, description="vllm: fraction of GPU memory the engine may take.")


class PluginBackendConfig(BackendConfig):
    """A backend class of your own, ``kind: package.module:Class``: the common settings plus free-form ``options``."""

    options: dict[str, Any] = Setting(default_factory=dict, affects_output=True, description="Settings for your backend class, passed through as given (all count as output-affecting).")


BACKEND_CONFIGS: dict[str, type[BackendConfig]] = {"transformers": TransformersBackendConfig, "openai": OpenAIBackendConfig, "vllm": VLLMBackendConfig, "plugin": PluginBackendConfig}


def backend_tag(kind: Any) -> str:
    """The ``BACKEND_CONFIGS`` entry for a kind: a built-in backend, or ``plugin`` for anything else (its validator checks it)."""
    return kind if kind in BUILTIN_BACKENDS else "plugin"


def backend_config_class(kind: Any) -> type[BackendConfig]:
    return BACKEND_CONFIGS[backend_tag(kind)]


def _discriminate(value: Any) -> str:
    kind = value.get("kind", "transformers") if isinstance(value, dict) else getattr(value, "kind", "transformers")
    return backend_tag(kind)


# A stage's ``backend`` section: the model of its ``kind`` (pydantic picks it, then forbids the other kinds' keys).
AnyBackendConfig = Annotated[
    Union[
        Annotated[TransformersBackendConfig, Tag("transformers")],
        Annotated[OpenAIBackendConfig, Tag("openai")],
        Annotated[VLLMBackendConfig, Tag("vllm")],
        Annotated[PluginBackendConfig, Tag("plugin")],
    ],
    Discriminator(_discriminate),
]
_BACKEND_ADAPTER: TypeAdapter = TypeAdapter(AnyBackendConfig)
