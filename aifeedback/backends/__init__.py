"""Backends: one protocol (:mod:`.base`), three implementations, chosen by ``BackendConfig.kind``."""

from __future__ import annotations

from ..config import BackendConfig
from .base import Backend, BackendStats, Capabilities, ChoiceResult, Completion, GenerationResult, ScoringPrompt

def make_backend(cfg: BackendConfig) -> Backend:
    """Build the backend a config names. Pipelines use :func:`aifeedback.stage.cached_backend`, which keeps one per config."""
    if cfg.kind == "transformers":
        from .hf_local import TransformersBackend

        return TransformersBackend(cfg)
    if cfg.kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend(cfg)  # one engine per process: callers go through stage.cached_backend
    raise ValueError(f"unknown backend kind {cfg.kind!r}; use transformers, openai or vllm")


__all__ = ["Backend", "BackendStats", "Capabilities", "ChoiceResult", "Completion", "GenerationResult", "ScoringPrompt", "make_backend"]
