"""Backends: one protocol (:mod:`.base`), three implementations, chosen by ``BackendConfig.kind``."""

from __future__ import annotations

from ..config import BackendConfig
from .base import Backend, BackendStats, Capabilities, ChoiceResult, Completion, GenerationResult, ScoringPrompt

_INSTANCES: dict[str, Backend] = {}


def make_backend(cfg: BackendConfig) -> Backend:
    """Build the backend a config names; in-process models load once per process."""
    if cfg.kind == "transformers":
        from .hf_local import TransformersBackend

        return TransformersBackend(cfg)
    if cfg.kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        from .vllm_engine import VLLMBackend

        key = cfg.model_dump_json()
        if key not in _INSTANCES:  # a vLLM engine owns the GPU: one per process
            _INSTANCES[key] = VLLMBackend(cfg)
        return _INSTANCES[key]
    raise ValueError(f"unknown backend kind {cfg.kind!r}; use transformers, openai or vllm")


__all__ = ["Backend", "BackendStats", "Capabilities", "ChoiceResult", "Completion", "GenerationResult", "ScoringPrompt", "make_backend"]
