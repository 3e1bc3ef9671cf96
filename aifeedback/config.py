"""Stage configs: one pydantic model per stage, ``extra="forbid"``, loaded from YAML, overridden by flags.

Each field is documented once, in its ``Field(description=...)``; the CLI help
and ``docs/`` read it from there.
"""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from .backend_config import (  # noqa: F401  (re-exported: a stage config's backend section)
    _BACKEND_ADAPTER,
    BACKEND_CONFIGS,
    BUILTIN_BACKENDS,
    AnyBackendConfig,
    BackendConfig,
    ModelPrice,
    OpenAIBackendConfig,
    PluginBackendConfig,
    TransformersBackendConfig,
    VLLMBackendConfig,
    backend_config_class,
    backend_tag,
)
from .config_base import Setting, StrictModel, affects_output  # noqa: F401  (re-exported: the configs' shared base)
from .errors import ConfigError
from .models import DEFAULT_LABELER


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0, le=5, description="Sampling temperature; 0 means greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, ge=1, le=32768, description="Most tokens generated per completion.")
    n: int = Field(1, ge=1, le=64, description="Completions per prompt, each with its own seed.")
    seed: int = Field(0, ge=0, description="Base seed; completion j of prompt p uses a seed derived from (seed, p, j).")


def overlong_refusal(backend_name: str) -> str:
    """Why ``overlong: exclude`` cannot run on a backend without a tokenizer, and what to set instead (one text, two checks)."""
    return (
        f"overlong: exclude needs exact token counts, and the {backend_name} backend has no tokenizer here; "
        "set overlong: truncate (lengths are then cut by an estimate of 4 characters a token)"
    )


def _overlong_check(cfg):
    """overlong: exclude needs exact token counts; an openai endpoint gives none before the request."""
    if cfg.overlong == "exclude" and cfg.backend.kind == "openai":
        raise ValueError(overlong_refusal("openai"))
    return cfg


class GenerateConfig(StrictModel):
    input: str | None = Field(None, description="Prompt set: a datasets folder, Parquet, JSONL or CSV file. Default: the shipped data/prompts set.")
    prompt_column: str = Field("prompt", description="Column with the prompt: plain text or a list of chat messages.")
    id_column: str | None = Field(None, description="Column with a stable prompt id; default is a hash of the prompt.")
    system_prompt: str | None = Field(None, description="System message prepended to every chat.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    batch_size: int = Field(16, ge=1, description="Prompts per stored batch (one Prefect task and one Parquet shard).")
    overlong: Literal["truncate", "exclude"] = Field("truncate", description="Prompts longer than the context: truncate them (flagged on the row) or exclude them with a reason.")
    backend: AnyBackendConfig = Field(default_factory=TransformersBackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _overlong_needs_a_tokenizer(self):
        return _overlong_check(self)


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
    backend: AnyBackendConfig = Field(default_factory=TransformersBackendConfig)

    @model_validator(mode="after")
    def _overlong_needs_a_tokenizer(self):
        return _overlong_check(self)


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
    backend: AnyBackendConfig = Field(default_factory=TransformersBackendConfig)

    @field_validator("cot_clamp")
    @classmethod
    def _clamp(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] <= v[1] <= 1:
            raise ValueError(f"cot_clamp must be [lo, hi] with 0 <= lo <= hi <= 1, e.g. [0.4, 0.6]; got {list(v)}")
        return v

    @model_validator(mode="after")
    def _overlong_needs_a_tokenizer(self):
        return _overlong_check(self)


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


def _models_in(annotation: Any) -> dict[str | None, type[BaseModel]]:
    """The pydantic models a field can hold, by union tag (None: untagged, e.g. ``SamplingConfig``)."""
    out: dict[str | None, type[BaseModel]] = {}

    def visit(tp: Any, tag: str | None) -> None:
        if typing.get_origin(tp) is Annotated:
            base, *meta = typing.get_args(tp)
            visit(base, next((m.tag for m in meta if isinstance(m, Tag)), tag))
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            out.setdefault(tag, tp)
        else:
            for arg in typing.get_args(tp):
                visit(arg, tag)

    visit(annotation, None)
    return out


def _locate(cls: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """An error location as the user writes the key (``backend.base_url``: union tags left out), and the model it ends in."""
    shown: list[str] = []
    model: type[BaseModel] | None = cls
    tagged: dict[str | None, type[BaseModel]] = {}
    for part in loc:
        if isinstance(part, str) and part in tagged:  # the union member pydantic tried: not a key
            model, tagged = tagged[part], {}
            continue
        shown.append(str(part))
        if isinstance(part, int) or model is None:  # a list index keeps the model
            continue
        field = model.model_fields.get(part)
        members = _models_in(field.annotation) if field is not None else {}
        model = members.get(None) if None in members else None
        tagged = members if model is None else {}
    return ".".join(shown), model


def field_of(cls: type[BaseModel], dotted: str) -> FieldInfo | None:
    """The ``Field`` behind a dotted key such as ``sampling.n`` or ``backend.base_url`` (any backend kind), or None."""
    *sections, name = dotted.split(".")
    models: list[type[BaseModel]] = [cls]
    for part in sections:
        models = [m for model in models if part in model.model_fields for m in _models_in(model.model_fields[part].annotation).values()]
    return next((m.model_fields[name] for m in models if name in m.model_fields), None)


def _unknown_key(cls: type[BaseModel], loc: tuple) -> str:
    where, model = _locate(cls, loc[:-1])
    key = f"{where}.{loc[-1]}" if where else str(loc[-1])
    allowed = sorted(model.model_fields) if model is not None else []
    if model is not None and issubclass(model, BackendConfig):
        kind = model.KIND or "module:Class"
        owners = [tag for tag, c in BACKEND_CONFIGS.items() if loc[-1] in c.model_fields]
        if owners:
            return f"{key!r} is a setting of the {' / '.join(owners)} backend, not of backend kind {kind!r}: set `{where}.kind` to {owners[0]} or remove it (allowed with {kind}: {allowed})"
        if model.KIND is None:
            return f"unknown key {key!r} (put settings of your own backend class under backend.options; allowed here: {allowed})"
    return f"unknown key {key!r} (check the spelling; allowed here: {allowed})"


def format_validation_error(cls: type, exc: ValidationError, origin: str) -> str:
    """One line per problem, naming the key as the user wrote it and what was expected; one problem is one line in all."""
    lines = []
    for err in exc.errors():
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(cls, err["loc"]))
            continue
        loc, _ = _locate(cls, err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = repr(err.get("input"))
        if "credentials" in msg:  # never echo a refused URL: it holds the secret
            got = "<hidden>"
        lines.append(f"{loc}: {msg}" + ("" if got in msg else f" (got {got})") if loc else msg)
    if len(lines) == 1:
        return f"invalid {cls.__name__} from {origin}: {lines[0]}"
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
    "AnyBackendConfig",
    "BackendConfig",
    "BACKEND_CONFIGS",
    "OpenAIBackendConfig",
    "PluginBackendConfig",
    "Setting",
    "TransformersBackendConfig",
    "VLLMBackendConfig",
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
