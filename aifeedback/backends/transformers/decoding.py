"""Batched decoding for the transformers backend: our own loop, with left padding, a KV cache reserved for
the whole decode and per-row seeded sampling. ``model.generate`` spends most of its time in per-step
bookkeeping on CPU.

:meth:`TransformersBackend.sample_tokens` cuts the micro-batches and holds the backend's lock; :func:`decode`
runs one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import SamplingConfig

if TYPE_CHECKING:
    from .backend import TransformersBackend


def decode(backend: TransformersBackend, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
    """Decode one micro-batch of tokenised prompts: (generated ids without the stop token, finish reason) per prompt."""
    import torch
    from transformers import DynamicCache

    B = len(prompts)
    ids, mask = left_pad(prompts, backend.pad_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(s if s is not None else 0)
        gens.append(g)
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    finish = ["length"] * B
    cache = DynamicCache()
    cache.layers = [reserved_layer(ids.shape[1] + params.max_new_tokens) for _ in range(backend.model.config.num_hidden_layers)]
    cache.layer_class_to_replicate = None
    with torch.inference_mode():
        logits = backend.forward(ids, mask, pos, cache, count=False).cpu()
        for step in range(params.max_new_tokens):
            nxt = sample_next(logits, params, gens)
            for b in range(B):
                if finished[b]:
                    nxt[b] = backend.pad_id
                    continue
                t = int(nxt[b])
                if t in backend.eos_set:
                    finished[b] = True
                    finish[b] = "stop"
                else:
                    out_tokens[b].append(t)
            if all(finished) or step == params.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
            logits = backend.forward(nxt[:, None], mask, pos, cache, count=False).cpu()
    return [(out_tokens[b], finish[b]) for b in range(B)]


def sample_next(logits, params: SamplingConfig, gens):
    """The next token of each row (B,) from its logits (B, vocab): argmax at temperature 0, else a draw from the
    row's own generator, from the nucleus when ``top_p < 1``."""
    import torch

    if params.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # nucleus from each row's top 256 (else 4,096) tokens when they hold the mass (nearly always):
        # the same distribution as a full-vocabulary sort, at a fraction of its cost. The width is
        # chosen per row, so a seeded row draws the same token whatever else is in its batch
        # (multinomial's random draws depend on the width).
        V = probs.shape[-1]
        top, top_i = probs.topk(min(256, V), dim=-1)
        enough = (top.sum(-1) >= params.top_p).tolist()
        top = top * (top.cumsum(-1) - top < params.top_p)  # the nucleus of every row, batched
        picks = []
        for b in range(probs.shape[0]):
            sp, si = top[b], top_i[b]
            if not enough[b]:  # rare: a flat row, widened on its own
                sp, si = probs[b].topk(min(4096, V))
                if float(sp.sum()) < params.top_p:
                    sp, si = probs[b].sort(descending=True)
                sp = sp * (sp.cumsum(-1) - sp < params.top_p)
            picks.append(si[torch.multinomial(sp, 1, generator=gens[b])[0]])
        return torch.stack(picks)
    return torch.stack([torch.multinomial(probs[b], 1, generator=gens[b])[0] for b in range(probs.shape[0])])


def left_pad(parts: list[list[int]], pad_id: int):
    """(ids, mask) with each row right-aligned; empty rows are all padding."""
    import torch

    width = max(1, max(len(p) for p in parts))
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(parts), width), dtype=torch.long)
    for r, p in enumerate(parts):
        if p:
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
    return ids, mask


_RESERVED = None


def reserved_layer(capacity: int):
    """A cache layer that writes each step's keys and values into buffers reserved for the whole decode,
    instead of concatenating (a DynamicLayer copies its whole cache on every step: 16% of batch-32
    decoding on the 2-core CPU, docs/performance.md). The keys are views of the filled part."""
    global _RESERVED
    if _RESERVED is None:
        from transformers.cache_utils import DynamicLayer

        class ReservedLayer(DynamicLayer):
            def __init__(self, capacity: int):
                super().__init__()
                self.capacity = capacity

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                keys = self.keys
                n, t = (keys.shape[-2] if keys is not None and keys.numel() else 0), key_states.shape[-2]
                buf = getattr(self, "k_buf", None)
                # the buffers hold the cache only while self.keys is still their view (crop keeps it;
                # a reset, reorder or batch change replaces it): otherwise start new ones from self.keys
                ours = buf is not None and n > 0 and keys.data_ptr() == buf.data_ptr() and keys.shape[0] == buf.shape[0]
                if not ours or n + t > self.capacity:
                    if n + t > self.capacity:
                        self.capacity = 2 * (n + t)
                    b, h, _, d = key_states.shape
                    k_new, v_new = key_states.new_empty((b, h, self.capacity, d)), value_states.new_empty((b, h, self.capacity, d))
                    if n:
                        k_new[:, :, :n] = keys
                        v_new[:, :, :n] = self.values
                    self.k_buf, self.v_buf = k_new, v_new
                self.k_buf[:, :, n : n + t] = key_states
                self.v_buf[:, :, n : n + t] = value_states
                self.keys, self.values = self.k_buf[:, :, : n + t], self.v_buf[:, :, : n + t]
                return self.keys, self.values

        _RESERVED = ReservedLayer
    return _RESERVED(capacity)
