"""Backend configs: one model per kind, and identity() holding exactly the settings that can change an output."""

from __future__ import annotations

import typing

import annotated_types
import pytest
from pydantic import ValidationError

from aifeedback.config import (
    BACKEND_CONFIGS,
    BackendConfig,
    GenerateConfig,
    LabelConfig,
    OpenAIBackendConfig,
    PluginBackendConfig,
    TransformersBackendConfig,
    VLLMBackendConfig,
    affects_output,
    build_config,
    parse_overrides,
)
from aifeedback.errors import ConfigError

PLUGIN = "my_pkg.backend:MyBackend"


def _make(cls: type[BackendConfig], **settings) -> BackendConfig:
    return cls(**({"kind": PLUGIN} if cls is PluginBackendConfig else {}), **settings)


def test_backendconfig_builds_the_model_of_its_kind():
    assert type(BackendConfig()) is TransformersBackendConfig and BackendConfig().kind == "transformers"
    assert type(build_config(GenerateConfig).backend) is TransformersBackendConfig
    assert type(BackendConfig(kind="openai", base_url="http://127.0.0.1:8000/v1")) is OpenAIBackendConfig
    assert type(BackendConfig(kind="vllm", tensor_parallel_size=2)) is VLLMBackendConfig
    assert type(BackendConfig(kind=PLUGIN, options={"a": 1})) is PluginBackendConfig
    assert type(BackendConfig.model_validate({"kind": "openai", "top_logprobs": 5})) is OpenAIBackendConfig
    assert isinstance(OpenAIBackendConfig(), BackendConfig) and OpenAIBackendConfig().kind == "openai"


def test_flags_and_yaml_pick_the_kind(tmp_path):
    cfg = build_config(LabelConfig, None, parse_overrides(["backend.kind=openai", "backend.base_url=http://127.0.0.1:8000/v1/", "backend.top_logprobs=5"]))
    assert type(cfg.backend) is OpenAIBackendConfig and cfg.backend.base_url == "http://127.0.0.1:8000/v1" and cfg.backend.top_logprobs == 5
    p = tmp_path / "gen.yaml"
    p.write_text("backend:\n  kind: vllm\n  dtype: bfloat16\n  tensor_parallel_size: 2\n")
    cfg = build_config(GenerateConfig, p, parse_overrides(["backend.model=./m"]))
    assert type(cfg.backend) is VLLMBackendConfig and (cfg.backend.dtype, cfg.backend.tensor_parallel_size, cfg.backend.model) == ("bfloat16", 2, "./m")
    dumped = build_config(GenerateConfig, None, {"backend": cfg.backend.model_dump()})  # a saved config loads back as the same kind
    assert dumped.backend == cfg.backend


@pytest.mark.parametrize(
    "kind, key, value, owner",
    [
        ("transformers", "base_url", "http://127.0.0.1:8000/v1", "openai"),
        ("transformers", "top_logprobs", 5, "openai"),
        ("openai", "device", "cpu", "transformers"),
        ("openai", "tensor_parallel_size", 2, "vllm"),
        ("vllm", "score_strategy", "grouped", "transformers"),
    ],
)
def test_a_key_of_another_kind_is_an_error_naming_its_kind(kind, key, value, owner):
    with pytest.raises(ConfigError) as err:
        build_config(LabelConfig, None, parse_overrides([f"backend.kind={kind}", f"backend.{key}={value}"]))
    msg = str(err.value)
    assert f"'backend.{key}' is a setting of the {owner} backend, not of backend kind '{kind}'" in msg
    assert f"set `backend.kind` to {owner}" in msg and "\n" not in msg
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BackendConfig(kind=kind, **{key: value})


def test_a_plugin_backend_takes_the_common_settings_and_options():
    cfg = build_config(GenerateConfig, None, {"backend": {"kind": PLUGIN, "model": "m", "options": {"url": "x", "n": 2}}})
    assert type(cfg.backend) is PluginBackendConfig and cfg.backend.options == {"url": "x", "n": 2}
    assert cfg.backend.identity() == {"kind": PLUGIN, "model": "m", "max_context": None, "options": {"url": "x", "n": 2}}
    with pytest.raises(ConfigError, match=r"unknown key 'backend.url' \(put settings of your own backend class under backend.options"):
        build_config(GenerateConfig, None, {"backend": {"kind": PLUGIN, "url": "x"}})
    with pytest.raises(ConfigError, match="transformers, openai, vllm or module:Class.*'tgi'"):
        build_config(GenerateConfig, None, parse_overrides(["backend.kind=tgi"]))
    with pytest.raises(ValidationError, match="is the config of the openai backend"):
        OpenAIBackendConfig(kind="vllm")


def test_every_backend_setting_is_classified():
    for cls in BACKEND_CONFIGS.values():
        for name, field in cls.model_fields.items():
            assert affects_output(field) in (True, False), f"{cls.__name__}.{name}: mark it Setting(..., affects_output=True/False)"
            assert field.description, f"{cls.__name__}.{name} has no description"


def _bounds(field) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo = m.gt
        elif isinstance(m, (annotated_types.Le, annotated_types.Lt)):
            hi = getattr(m, "le", getattr(m, "lt", None))
    return lo, hi


def _other_value(name: str, field, current):
    """A valid value different from ``current``."""
    ann = field.annotation
    if name == "prices":  # a price table must price the backend's model (the default one here)
        from aifeedback.models import DEFAULT_POLICY

        return {DEFAULT_POLICY: {"input": 1.0, "output": 2.0}}
    if typing.get_origin(ann) is dict:
        return {"other": 1}
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]  # X | None -> X
    if name == "dtype" and current == "device":  # "device" resolves to float32 on CPU, so flip to another dtype
        return "bfloat16"
    if typing.get_origin(ann) is typing.Literal:
        return next(c for c in typing.get_args(ann) if c != current)
    if name == "kind":
        return "my_pkg.backend:OtherBackend"
    if name == "base_url":
        return "http://other-server.example/v1"
    if args[0] is bool:
        return not current
    if args[0] in (int, float):
        lo, hi = _bounds(field)
        start = current if current is not None else (lo or 1)
        value = start + 1 if args[0] is int else start / 2
        if hi is not None and value > hi:
            value = start - 1
        return value if value != current else start + 1
    if args[0] is str:
        return f"other-{current}"
    raise AssertionError(f"no test value for {name}: {ann}")


@pytest.mark.parametrize("cls", list(BACKEND_CONFIGS.values()), ids=list(BACKEND_CONFIGS))
def test_identity_changes_exactly_with_the_output_affecting_settings(cls):
    base = _make(cls, base_url="http://127.0.0.1:8000/v1") if cls is OpenAIBackendConfig else _make(cls)
    assert set(base.identity()) == {n for n, f in cls.model_fields.items() if affects_output(f)}
    for name, field in cls.model_fields.items():
        if name == "kind" and cls.KIND is not None:  # one kind per model: kinds differ across models
            assert base.identity()["kind"] == cls.KIND
            continue
        flipped = cls(**{**base.model_dump(), name: _other_value(name, field, getattr(base, name))})
        assert getattr(flipped, name) != getattr(base, name), name
        changed = flipped.identity() != base.identity()
        assert changed == affects_output(field), f"{cls.__name__}.{name}: affects_output={affects_output(field)} but identity {'changed' if changed else 'did not change'}"


def test_transformers_dtype_device_resolves_to_float32_on_cpu_in_the_identity():
    """The default dtype ("device") keys and records what the weights load in: on CPU the same identity as float32,
    so keys made before the default changed still match."""
    assert TransformersBackendConfig(device="cpu").identity() == TransformersBackendConfig(device="cpu", dtype="float32").identity()
    assert TransformersBackendConfig(device="cpu").identity()["dtype"] == "float32"
    assert TransformersBackendConfig(device="cpu", dtype="bfloat16").identity()["dtype"] == "bfloat16"


def test_dtype_device_keeps_what_it_resolved_to_where_it_was_keyed(monkeypatch):
    """A stage driver keys a batch, a worker loads the model: the worker loads the dtype the key holds, even where
    "device" would resolve otherwise (a CPU driver, a GPU worker)."""
    import pickle

    import torch

    keyed = TransformersBackendConfig()  # device auto, dtype device: keyed here, on a CPU machine
    assert keyed.identity()["dtype"] == "float32"
    fresh = TransformersBackendConfig()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # now "a GPU worker" with bf16 units
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert fresh.resolved_dtype() == "bfloat16"
    assert pickle.loads(pickle.dumps(keyed)).resolved_dtype() == "float32"
    # a GPU without bf16 units (emulation does not count): float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert TransformersBackendConfig().resolved_dtype() == "float32"


def test_identity_holds_what_the_issue_names():
    t = TransformersBackendConfig().identity()
    assert {"kind", "model", "dtype", "device", "max_context"} <= set(t) and not {"gen_batch_size", "num_threads", "score_strategy"} & set(t)
    o = OpenAIBackendConfig(base_url="http://127.0.0.1:8000/v1").identity()
    assert {"base_url", "top_logprobs", "max_context"} <= set(o)
    assert not {"max_concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s", "api_key_env"} & set(o)
    v = VLLMBackendConfig().identity()
    assert {"dtype", "tensor_parallel_size"} <= set(v) and "gpu_memory_utilization" not in v
