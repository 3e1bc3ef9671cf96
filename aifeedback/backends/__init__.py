"""Backends: one protocol (:mod:`.base`), three implementations, chosen by ``BackendConfig.kind``.

Each kind has its own config model (:mod:`aifeedback.config`); a backend class of
your own (``kind: package.module:Class``) gets a ``PluginBackendConfig``: the common
settings plus its free-form ``options``.
"""

from __future__ import annotations

from ..config import BackendConfig
from ..errors import ConfigError
from .base import Backend, BackendStats, Capabilities, ChoiceResult, Completion, GenerationResult, ScoringPrompt


def make_backend(cfg: BackendConfig) -> Backend:
    """Build the backend a config names. Pipelines use :func:`aifeedback.stage.cached_backend`, which keeps one per config."""
    if cfg.kind == "transformers":
        from .transformers import TransformersBackend

        return TransformersBackend(cfg)
    if cfg.kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend(cfg)  # one engine per process: callers go through stage.cached_backend
    if ":" in cfg.kind:  # a backend class of your own: "package.module:ClassName", built from its PluginBackendConfig
        import importlib

        module, _, attr = cfg.kind.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                raise ConfigError(f"backend kind {cfg.kind!r}: no module {module!r}; make it importable (pip install it or add its folder to PYTHONPATH)") from None
            raise  # the plugin's own import failed: show its traceback
        if not hasattr(mod, attr):
            raise ConfigError(f"backend kind {cfg.kind!r}: module {module} has no {attr!r}")
        backend = getattr(mod, attr)(cfg)
        if not isinstance(backend, Backend):
            raise ConfigError(f"backend kind {cfg.kind!r} does not implement the backend protocol (aifeedback.backends.base.Backend)")
        return backend
    raise ConfigError(f"unknown backend kind {cfg.kind!r}; use transformers, openai, vllm or module:Class")


__all__ = ["Backend", "BackendStats", "Capabilities", "ChoiceResult", "Completion", "GenerationResult", "ScoringPrompt", "make_backend"]
