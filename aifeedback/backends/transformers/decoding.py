"""Batched decoding for the transformers backend: our own loop, with left padding, a KV cache reserved for
the whole decode and per-row seeded sampling. ``model.generate`` spends most of its time in per-step
bookkeeping on CPU.

:meth:`TransformersBackend.sample_tokens` cuts the micro-batches and holds the backend's lock; :func:`decode`
runs one of them, on one of two paths:

* CPU (:func:`decode_cpu`): a ``torch.Generator`` per row, the draws of every release so far (seeded outputs
  unchanged), with the nucleus from each row's top 256 tokens.
* GPU (:func:`decode_on_device`): nothing leaves the device until the end. Temperature, top-p, the draw and the
  stop check run batched on the device; the host looks at the stop flags only every ``SYNC_EVERY`` steps.
  Each row's draw is an exponential race whose noise is a hash of (row seed, step, token id), so a seeded row
  draws the same tokens whatever its batch. Its draws differ from the CPU path's (another random stream),
  so a seed gives one text on CPU and another on a GPU, as the kernels' last bits already did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import SamplingConfig

if TYPE_CHECKING:
    from .backend import TransformersBackend


SYNC_EVERY = 16  # device path: steps between looks at the stop flags (the only host round trip)


def decode(backend: TransformersBackend, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
    """Decode one micro-batch of tokenised prompts: (generated ids without the stop token, finish reason) per prompt.

    The device path runs where the model is not on CPU; ``backend.device_decode`` (True/False) forces a path."""
    on_device = getattr(backend, "device_decode", None)
    if on_device is None:
        on_device = backend.device.type != "cpu"
    return (decode_on_device if on_device else decode_cpu)(backend, prompts, params, seeds)


def decode_cpu(backend: TransformersBackend, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
    """The CPU path: per-row ``torch.Generator`` draws, one host look per step (cheap on CPU)."""
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


def decode_on_device(backend: TransformersBackend, prompts: list[list[int]], params: SamplingConfig, seeds: list[int | None]) -> list[tuple[list[int], str]]:
    """The GPU path: sampling, the stop check and the generated ids stay on the model's device; one copy at the end."""
    import torch
    from transformers import DynamicCache

    dev = backend.device
    B, T = len(prompts), params.max_new_tokens
    ids, mask = left_pad(prompts, backend.pad_id)
    L = ids.shape[1]
    full_mask = torch.ones((B, L + T), dtype=torch.long, device=dev)  # the mask of the whole decode, sliced per step
    full_mask[:, :L] = mask.to(dev)
    prefill_mask, step_mask = device_masks(backend, full_mask, L, padded=any(len(p) < L for p in prompts))
    pos = (mask.cumsum(-1) - 1).clamp(min=0).to(dev)
    keys = row_keys(torch.tensor([(s if s is not None else 0) & MASK32 for s in seeds], dtype=torch.int64, device=dev))
    eos = torch.tensor(sorted(backend.eos_set) or [-1], dtype=torch.long, device=dev)
    pad = torch.tensor(backend.pad_id, dtype=torch.long, device=dev)
    out = torch.full((B, T), backend.pad_id, dtype=torch.long, device=dev)
    length = torch.full((B,), T, dtype=torch.long, device=dev)  # tokens kept per row (the stop token is not)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    cache = DynamicCache()
    cache.layers = [reserved_layer(L + T) for _ in range(backend.model.config.num_hidden_layers)]
    cache.layer_class_to_replicate = None
    with torch.inference_mode():
        logits = backend.forward(ids.to(dev), prefill_mask, pos, cache, count=False)
        for step in range(T):
            nxt = torch.where(finished, pad, sample_on_device(logits, params, keys, step))
            hit = torch.isin(nxt, eos) & ~finished
            length = torch.where(hit, step, length)
            finished = finished | hit
            out[:, step] = torch.where(finished, pad, nxt)
            if step == T - 1 or ((step + 1) % SYNC_EVERY == 0 and bool(finished.all())):
                break
            pos = pos[:, -1:] + 1
            logits = backend.forward(nxt[:, None], None if step_mask is None else step_mask[..., : L + step + 1], pos, cache, count=False)
    stopped = (length < T).cpu().tolist()
    out_l, length_l = out.cpu().tolist(), length.cpu().tolist()
    return [(out_l[b][: length_l[b]], "stop" if stopped[b] else "length") for b in range(B)]


def device_masks(backend: TransformersBackend, full_mask, L: int, padded: bool):
    """(prefill mask, decode mask to slice per step), built once on the device.

    Given a 2D padding mask, transformers' SDPA mask builder reads it on the host at every step (is it all ones,
    so the mask can be skipped?): one device sync per decoded token. So:

    * no padding (``padded`` is known on the host): no mask at all, and SDPA runs its causal kernels;
    * padding, full attention in every layer, SDPA or eager: a 4D mask, which transformers uses as given (boolean
      for SDPA, additive for eager). A left-padding query attends to itself, so no row is empty (an empty row
      gives NaN, which the cached keys would carry into real rows);
    * otherwise the 2D mask as before: other attention implementations (flash), and models whose layers are not
      all full attention (a sliding window or chunks shorter than the decode, hybrid layers), whose masks
      transformers must build itself.
    """
    import torch

    if not padded:
        return None, None
    cfg = backend.model.config
    impl = getattr(cfg, "_attn_implementation", None)
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    window = getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None)
    if impl not in ("sdpa", "eager") or types != {"full_attention"} or (window and full_mask.shape[1] > window):
        return full_mask[:, :L], full_mask
    keys = full_mask.bool()
    eye = torch.eye(L, dtype=torch.bool, device=full_mask.device)
    prefill = (torch.ones((L, L), dtype=torch.bool, device=full_mask.device).tril() & keys[:, None, None, :L]) | eye
    step = keys[:, None, None, :]  # (B, 1, 1, L + T): the new token is real, and attends to every real key before it
    if impl == "eager":
        dtype = next(backend.model.parameters()).dtype
        lo = torch.finfo(dtype).min
        return torch.where(prefill, 0.0, lo).to(dtype), torch.where(step, 0.0, lo).to(dtype)
    return prefill, step


MASK32 = 0xFFFFFFFF


def hash32(x):
    """A 32-bit integer mix (xorshift-multiply) of int64 tensors holding values in [0, 2^32); the multipliers are
    below 2^31, so no product overflows int64 and CPU and CUDA give the same bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & MASK32
    return x ^ (x >> 16)


def row_keys(seeds):
    """Per-row keys (B,) from 32-bit seeds."""
    return hash32(hash32(seeds) ^ 0x5BD1E995)


def exp_noise(keys, step: int, token_ids):
    """Exp(1) noise (B, K) for ``token_ids`` (B, K) or (1, K): a function of (row key, step, token id) only."""
    import torch

    k = hash32(hash32((keys + step * 0x9E3779B) & MASK32) ^ 0x2545F491)[:, None]  # (B, 1): this row at this step, well mixed
    h = hash32((k + token_ids * 0x61C88647) & MASK32)  # one round per token: the (B, vocab) part, kept short
    u = (h >> 8).to(torch.float32) * (1.0 / (1 << 24)) + (0.5 / (1 << 24))  # in (0, 1)
    return -torch.log(u)


def sample_on_device(logits, params: SamplingConfig, keys, step: int):
    """The next token of each row (B,), batched with no host round trip: argmax at temperature 0, else an
    exponential race (argmax of p / E, E ~ Exp(1), which draws token i with probability p_i) over the nucleus
    (the fewest most likely tokens holding ``top_p``, from a full sort, as a sequential draw would)."""
    import torch

    if params.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = (sp.cumsum(-1) - sp) < params.top_p
        score = torch.where(keep, sp / exp_noise(keys, step, si), -1.0)
        return si.gather(-1, score.argmax(-1, keepdim=True))[:, 0]
    V = probs.shape[-1]
    return (probs / exp_noise(keys, step, torch.arange(V, device=probs.device)[None])).argmax(-1)


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
