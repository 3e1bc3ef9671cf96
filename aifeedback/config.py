"""Stage configs: one pydantic model per stage, ``extra="forbid"``, loaded from YAML, overridden by flags.

Each field is documented once, in its ``Field(description=...)``; the CLI help
and ``docs/`` read it from there.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .models import DEFAULT_LABELER, DEFAULT_POLICY


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackendConfig(StrictModel):
    kind: str = Field(
        "transformers",
        description="Which backend runs the model: transformers (in-process), openai (any OpenAI-compatible endpoint), vllm (offline engine), or module:Class for your own class implementing the backend protocol.",
    )
    model: str = Field(DEFAULT_POLICY, description="Model id: an embedded name, a local folder or a Hugging Face id (the served model name for openai).")
    # transformers
    device: str = Field("auto", description="transformers: torch device; auto picks cuda when present, else cpu.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="transformers/vllm: weight dtype. Stay in float32 on CPUs without bf16 units.")
    num_threads: int | None = Field(None, ge=1, description="transformers: torch intra-op threads; default is the number of cores.")
    gen_batch_size: int = Field(32, ge=1, le=1024, description="Chats decoded together in one batch (32 was fastest on a 2-core CPU: docs/performance.md).")
    score_batch_size: int = Field(32, ge=1, le=4096, description="Scoring prompts evaluated together (transformers, vllm).")
    score_strategy: Literal["auto", "grouped", "batched"] = Field("auto", description="transformers: grouped scores each pair's orders together after a shared prefix (no cross-pair padding; best on CPU); batched pads many prompts into one pass (best on GPU); auto picks by device.")
    score_batch_tokens: int = Field(12288, ge=256, description="transformers: most padded prompt tokens in one scoring forward pass.")
    max_context: int | None = Field(None, ge=16, description="Context length in tokens; default is the model's.")
    # openai
    base_url: str | None = Field(None, description="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: name of the environment variable that holds the key. Keys are never read from files.")
    max_concurrency: int = Field(8, ge=1, le=512, description="openai: requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="openai: timeout for every request, in seconds.")
    max_retries: int = Field(5, ge=0, le=50, description="openai: retries on 429, 5xx, resets, timeouts and malformed replies.")
    backoff_base_s: float = Field(0.5, ge=0, description="openai: first backoff delay; doubles each retry, with full jitter.")
    backoff_max_s: float = Field(20.0, ge=0, description="openai: longest single backoff delay (Retry-After is honoured up to this).")
    top_logprobs: int = Field(20, ge=0, le=20, description="openai: top_logprobs requested when scoring; 0 means the endpoint has none.")
    # vllm
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model replica (tensor parallel).")
    data_parallel_size: int = Field(1, ge=1, description="vllm: model replicas (data parallel).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: fraction of GPU memory the engine may take.")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("transformers", "openai", "vllm") and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"backend kind must be transformers, openai, vllm or module:Class (an importable backend class), got {v!r}")
        return v

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

    def identity(self) -> dict:
        """The fields that change model outputs (used in batch keys and provenance)."""
        return {"kind": self.kind, "model": self.model, "dtype": self.dtype}


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0, le=5, description="Sampling temperature; 0 means greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, ge=1, le=32768, description="Most tokens generated per completion.")
    n: int = Field(1, ge=1, le=64, description="Completions per prompt, each with its own seed.")
    seed: int = Field(0, ge=0, description="Base seed; completion j of prompt p uses a seed derived from (seed, p, j).")


class GenerateConfig(StrictModel):
    input: str | None = Field(None, description="Prompt set: a datasets folder, Parquet, JSONL or CSV file. Default: the shipped data/prompts set.")
    prompt_column: str = Field("prompt", description="Column with the prompt: plain text or a list of chat messages.")
    id_column: str | None = Field(None, description="Column with a stable prompt id; default is a hash of the prompt.")
    system_prompt: str | None = Field(None, description="System message prepended to every chat.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    batch_size: int = Field(16, ge=1, description="Prompts per stored batch (one Prefect task and one Parquet shard).")
    overlong: Literal["truncate", "exclude"] = Field("truncate", description="Prompts longer than the context: truncate them (flagged on the row) or exclude them with a reason.")
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class ReviseConfig(StrictModel):
    constitution: str = Field("harmless", description="Constitution id or YAML path with critique/revision pairs.")
    rounds: int = Field(4, ge=1, le=16, description="Critique -> revise rounds per response (4 in the CAI paper).")
    few_shot: bool = Field(True, description="Prepend the constitution's critique/revision exemplars to each chat.")
    filter_regex: str | None = Field(None, description="Revise only responses whose prompt or response matches this regex (case-insensitive); others pass through unrevised.")
    batch_size: int = Field(16, ge=1, description="Responses per stored batch (one Prefect task and one Parquet shard).")
    overlong: Literal["truncate", "exclude"] = Field("truncate", description="Chats longer than the context: truncate them (flagged) or exclude them with a reason.")
    seed: int = Field(0, ge=0, description="Seeds principle sampling and generation.")
    limit: int | None = Field(None, ge=1, description="Revise only the first N responses.")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=96))
    backend: BackendConfig = Field(default_factory=BackendConfig)


class LabelConfig(StrictModel):
    input: str | None = Field(None, description="Pairs file (datasets folder, Parquet, JSONL, CSV). Default: pairs built from this run's responses stage.")
    prompt_column: str = Field("prompt", description="Column with the context: text or chat messages.")
    response_a_column: str = Field("response_a", description="Column with response A.")
    response_b_column: str = Field("response_b", description="Column with response B.")
    id_column: str | None = Field("pair_id", description="Column with a stable pair id; a content hash when absent.")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs.")
    method: Literal["pairwise", "pointwise"] = Field("pairwise", description="pairwise: one prompt shows both responses; pointwise: each response rated 1-10 and the ratings compared.")
    orders: Literal["both", "single"] = Field("both", description="both: score (A,B) and (B,A) and average; single: one seeded order per pair (a baseline only).")
    calibrate: bool = Field(False, description="Divide out the option prior measured on content-free samples (contextual calibration).")
    cot: bool = Field(False, description="Generate a rationale first, then append the ending and score; the rationale is stored.")
    cot_clamp: tuple[float, float] | None = Field(None, description="Clamp chain-of-thought probabilities to [lo, hi], as in Constitutional AI (e.g. [0.4, 0.6]).")
    cot_max_new_tokens: int = Field(96, ge=8, description="Longest rationale, in tokens.")
    few_shot: bool = Field(False, description="Include the template's few-shot exemplars.")
    template: str | None = Field(None, description="Template id (pairwise, pointwise) or YAML path; default follows method.")
    constitution: str | None = Field(None, description="Constitution id or YAML path whose choice principles replace the template's question.")
    principles: Literal["sample", "ensemble"] = Field("sample", description="With a constitution: sample one choice principle per pair, or average over k of them.")
    k_principles: int = Field(3, ge=1, le=32, description="Principles averaged per pair in ensemble mode.")
    tie_margin: float = Field(0.05, ge=0, lt=0.5, description="Hard label is a tie when |p(A>B) - 0.5| is below this.")
    temperature: float = Field(1.0, gt=0, description="Calibration temperature applied to the soft label's log-odds (fit it with `aifeedback agreement`).")
    max_context_tokens: int = Field(1024, ge=16, description="Longest context shown to the labeler, in tokens.")
    max_response_tokens: int = Field(512, ge=8, description="Longest response shown to the labeler, in tokens.")
    overlong: Literal["truncate", "exclude"] = Field("truncate", description="Contexts or responses over those limits: truncate (flagged on the row) or exclude with a reason.")
    seed: int = Field(0, ge=0, description="Seeds single-order choice, principle sampling and rationales.")
    batch_size: int = Field(64, ge=1, description="Pairs per stored batch (one Prefect task and one Parquet shard).")
    backend: BackendConfig = Field(default_factory=BackendConfig)

    @field_validator("cot_clamp")
    @classmethod
    def _clamp(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] <= v[1] <= 1:
            raise ValueError(f"cot_clamp must be [lo, hi] with 0 <= lo <= hi <= 1, e.g. [0.4, 0.6]; got {list(v)}")
        return v


C = TypeVar("C", bound=BaseModel)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["sampling.n=2", "backend.model=x"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override must look like key.sub=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:  # not YAML ("[1", "a: b: c"): the literal text, which the config then validates
            value = raw
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):  # "Answer: briefly" is text, not a mapping
            value = raw
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is not None:
            out[k] = v
    return out


def _allowed_keys(cls: type, path: tuple) -> list[str]:
    """Field names of the (nested) model at ``path``; list indices are skipped."""
    import typing

    model = cls
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        for c in list(candidates):
            candidates.extend(typing.get_args(c))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(cls: type, exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r} (check the spelling; allowed here: {_allowed_keys(cls, err['loc'][:-1])})")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {cls.__name__} from {origin}:\n  " + "\n  ".join(lines)


def build_config(cls: type[C], path: str | Path | None = None, overrides: dict | None = None) -> C:
    """Load ``cls`` from a YAML file (optional), then apply ``overrides`` (nested dict)."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p} is not UTF-8 text ({exc.reason}); pass a YAML config file saved as UTF-8") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
        origin = str(p)
    if overrides:
        data = _merge(data, overrides)
        origin += " + flags"
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(cls, exc, origin)) from None


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (pydantic model or JSON-able value)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = [
    "BackendConfig",
    "SamplingConfig",
    "GenerateConfig",
    "LabelConfig",
    "ReviseConfig",
    "build_config",
    "parse_overrides",
    "config_hash",
    "DEFAULT_LABELER",
    "StrictModel",
]
