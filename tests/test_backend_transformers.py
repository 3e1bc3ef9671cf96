"""The embedded model through the transformers backend: real generation and scoring."""

import math

from aifeedback.backends.base import ScoringPrompt
from aifeedback.config import SamplingConfig

PROMPTS = [
    "What is the capital of France?",
    "Give one tip for sleeping better.",
    "Write a short greeting for a birthday card.",
    "Name a fruit that is yellow.",
]


def test_embedded_generates_nonempty(embedded_backend):
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    res = embedded_backend.generate(chats, SamplingConfig(max_new_tokens=24, temperature=0.7), seeds=[[i] for i in range(4)])
    assert len(res) == 4
    for r in res:
        assert r.error is None
        (c,) = r.completions
        assert c.text.strip(), "empty completion"
        assert 0 < c.completion_tokens <= 24
        assert c.prompt_tokens > 5


def test_generation_is_seeded(embedded_backend):
    chats = [[{"role": "user", "content": PROMPTS[1]}]]
    params = SamplingConfig(max_new_tokens=12, temperature=1.0, n=2)
    a = embedded_backend.generate(chats, params, seeds=[[7, 8]])[0].completions
    b = embedded_backend.generate(chats, params, seeds=[[7, 8]])[0].completions
    assert [c.text for c in a] == [c.text for c in b]


def test_batched_greedy_matches_single(embedded_backend):
    params = SamplingConfig(max_new_tokens=10, temperature=0)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    batched = [r.completions[0].text for r in embedded_backend.generate(chats, params, seeds=[[0]] * 3)]
    single = [embedded_backend.generate([c], params, seeds=[[0]])[0].completions[0].text for c in chats]
    assert batched == single


def _pair_prompts():
    pre = "Compare the two answers and say which is better.\n\n"
    qa = [("What is 2+2?", "4", "5"), ("Name a colour of the clear daytime sky.", "Blue.", "Green, and it is made of cheese.")]
    out = []
    for q, a, b in qa:
        for x, y in ((a, b), (b, a)):
            out.append(ScoringPrompt([{"role": "user", "content": f"{pre}Question: {q}\nAnswer 1: {x}\nAnswer 2: {y}\nWhich answer is better, 1 or 2?"}], "Better answer:"))
    return out


def test_choice_probs_finite_and_normalised(embedded_backend):
    res = embedded_backend.choice_probs(_pair_prompts(), ["1", "2"])
    assert len(res) == 4
    for r in res:
        assert r.source == "logprobs"
        assert all(math.isfinite(p) for p in r.probs)
        assert abs(sum(r.probs) - 1) < 1e-9
        assert all(lp is not None and lp < 0 for lp in r.logprobs)


def test_prefix_reuse_matches_unshared_scoring(embedded_backend):
    """The two-level prefix tree must give the same log-probs as scoring each prompt alone."""
    from aifeedback.backends.transformers.prefix_plan import prefix_plan
    from aifeedback.backends.transformers.scoring import score_single

    prompts = _pair_prompts()
    shared = embedded_backend.choice_probs(prompts, ["1", "2"])
    variants = embedded_backend.candidate_variants(["1", "2"])
    seqs = [embedded_backend.encode(embedded_backend.render(p.messages) + p.answer_prefix) for p in prompts]
    p0, groups = prefix_plan(seqs)
    assert p0 > 20 and len(groups) == 2, "both orders of a pair should share their context"
    for s, r in zip(seqs, shared):
        alone = score_single(embedded_backend, s, variants)[0]
        assert all(abs(a - b) < 2e-3 for a, b in zip(alone, r.logprobs))


def test_multi_token_candidates(embedded_backend):
    """1..10: '10' is two tokens here; its mass is taken out of '1'."""
    res = embedded_backend.choice_probs(_pair_prompts()[:1], [str(i) for i in range(1, 11)])[0]
    assert len(res.probs) == 10 and abs(sum(res.probs) - 1) < 1e-9
    assert all(math.isfinite(lp) for lp in res.logprobs)


def test_overlong_prompt_is_truncated_and_flagged(embedded_backend):
    long_text = "word " * 9000
    res = embedded_backend.choice_probs([ScoringPrompt([{"role": "user", "content": long_text + "\nAnswer 1 or 2."}])], ["1", "2"])[0]
    assert res.truncated and res.prompt_tokens <= embedded_backend.max_context
    assert abs(sum(res.probs) - 1) < 1e-9


def test_reserved_cache_layer_matches_concatenation():
    """The decode cache writes into reserved buffers: its keys equal plain concatenation through growth
    past the reservation, a crop, and a batch reorder (which the buffers must not hide)."""
    import torch

    from aifeedback.backends.transformers.decoding import reserved_layer
    from aifeedback.backends.transformers.scoring import crop_cache, reindex_cache

    class Holder:  # what crop_cache / reindex_cache walk
        def __init__(self, layer):
            self.layers = [layer]

    g = torch.Generator().manual_seed(0)
    layer = reserved_layer(3)
    ref_k = ref_v = None
    for t in (2, 1, 3):  # 2 + 1 fills the reservation; 3 more must grow it
        k, v = torch.randn(2, 3, t, 4, generator=g), torch.randn(2, 3, t, 4, generator=g)
        got_k, got_v = layer.update(k, v)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], dim=-2)
        ref_v = v if ref_v is None else torch.cat([ref_v, v], dim=-2)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
    assert layer.get_seq_length() == 6
    crop_cache(Holder(layer), 4)
    k, v = torch.randn(2, 3, 1, 4, generator=g), torch.randn(2, 3, 1, 4, generator=g)
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([ref_k[:, :, :4], k], dim=-2))
    ref_k = got_k.clone()
    reindex_cache(Holder(layer), torch.tensor([1, 0]))  # swap the rows: a new tensor, not a view of the buffers
    k, v = torch.randn(2, 3, 1, 4, generator=g), torch.randn(2, 3, 1, 4, generator=g)
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([ref_k[[1, 0]], k], dim=-2))


def test_nucleus_draw_of_a_row_does_not_depend_on_its_batch():
    """A seeded row draws the same token alone and beside a flat row that needs the full-vocabulary sort."""
    import torch

    from aifeedback.backends.transformers.decoding import sample_next

    V = 5000
    peaked = torch.full((V,), -10.0)
    peaked[:40] = torch.linspace(3.0, 0.0, 40)
    flat = torch.zeros(V)  # its top 4,096 hold 82% of the mass, under top_p
    params = SamplingConfig(temperature=1.0, top_p=0.9)
    drawn = set()
    for seed in range(40):
        g_alone, g_both = torch.Generator().manual_seed(seed), [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(99)]
        for _step in range(3):  # decoding steps: a wider draw would also leave the generator elsewhere for the next
            alone = sample_next(peaked[None], params, [g_alone])
            both = sample_next(torch.stack([peaked, flat]), params, g_both)
            assert int(alone[0]) == int(both[0])
            assert 0 <= int(both[1]) < V
            drawn.add(int(alone[0]))
    assert len(drawn) > 5  # the draws are random, not the argmax
