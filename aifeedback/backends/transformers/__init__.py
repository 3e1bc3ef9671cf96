"""The ``transformers`` backend (in-process, the embedded default), by responsibility:

* :mod:`.backend`: :class:`TransformersBackend`, the facade (capabilities, ``generate``, ``choice_probs``);
* :mod:`.loading`: model and tokenizer, once per process;
* :mod:`.decoding`: the batched decoder, its reserved KV cache and nucleus sampling;
* :mod:`.prefix_plan`: shared prefixes, groups, packs and chunks; pure, no torch;
* :mod:`.scoring`: the grouped and batched strategies and the candidates' log-probs;
* :mod:`.varlen`: the varlen strategy, the CPU default.

Inside this package ``import transformers`` is absolute and names the Hugging Face library.
"""

from __future__ import annotations

from .backend import TransformersBackend
from .loading import load_causal_lm

__all__ = ["TransformersBackend", "load_causal_lm"]
