"""Loading the model and tokenizer, once per process.

The model id is resolved by :func:`aifeedback.models.resolve` (the embedded models, a local folder or a Hub id;
the embedded GGUF's safetensors cache lives there too).
"""

from __future__ import annotations

import os
import threading

from ...models import resolve

_LOADED: dict[tuple, tuple] = {}
_LOAD_LOCK = threading.Lock()


def load_causal_lm(model_id: str, device: str = "auto", dtype: str = "float32"):
    """Load (model, tokenizer) once per process; later calls return the same objects."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(model_id)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    key = (str(resolved.path), dev, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
            tok = AutoTokenizer.from_pretrained(resolved.path)
            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch_dtype).to(dev).eval()
            _LOADED[key] = (model, tok, resolved)
        return _LOADED[key]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
