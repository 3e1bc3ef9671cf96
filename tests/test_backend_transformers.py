"""The embedded model through the transformers backend: real generation and scoring."""

import math

import pytest

from aifeedback.backends.base import ScoringPrompt, normalise
from aifeedback.config import SamplingConfig

PROMPTS = [
    "What is the capital of France?",
    "Give one tip for sleeping better.",
    "Write a short greeting for a birthday card.",
    "Name a fruit that is yellow.",
]


@pytest.mark.slow
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


@pytest.mark.slow
def test_generation_is_seeded(embedded_backend):
    """A seed repeats its text exactly, and another seed draws another text: the seeds are used, not just recorded."""
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingConfig(max_new_tokens=12, temperature=1.0, n=2)

    def texts(seeds):
        res = embedded_backend.generate(chats, params, seeds=[seeds] * len(chats))
        assert [c.seed for r in res for c in r.completions] == seeds * len(chats)
        return [c.text for r in res for c in r.completions]

    first = texts([1, 2])
    assert texts([1, 2]) == first, "the same seeds must give the same texts"
    assert texts([2, 1]) == [t for i in range(0, len(first), 2) for t in (first[i + 1], first[i])], "a row's text must depend on its seed only, not on its place"
    seed1, seed2 = first[0::2], first[1::2]
    assert sum(a != b for a, b in zip(seed1, seed2)) >= 1, f"seeds 1 and 2 gave the same texts: {seed1}"


@pytest.mark.slow
def test_batched_greedy_matches_single(embedded_backend):
    params = SamplingConfig(max_new_tokens=10, temperature=0)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    batched = [r.completions[0].text for r in embedded_backend.generate(chats, params, seeds=[[0]] * 3)]
    single = [embedded_backend.generate([c], params, seeds=[[0]])[0].completions[0].text for c in chats]
    assert batched == single


def _pair_prompts():
    return _pair_prompts_of([("What is 2+2?", "4", "5"), ("Name a colour of the clear daytime sky.", "Blue.", "Green, and it is made of cheese.")])


def _pair_prompts_of(qa):
    """Both orders of each (question, answer, answer), after a shared preamble."""
    pre = "Compare the two answers and say which is better.\n\n"
    out = []
    for q, a, b in qa:
        for x, y in ((a, b), (b, a)):
            out.append(ScoringPrompt([{"role": "user", "content": f"{pre}Question: {q}\nAnswer 1: {x}\nAnswer 2: {y}\nWhich answer is better, 1 or 2?"}], "Better answer:"))
    return out


@pytest.mark.slow
def test_choice_probs_finite_and_normalised(embedded_backend):
    res = embedded_backend.choice_probs(_pair_prompts(), ["1", "2"])
    assert len(res) == 4
    for r in res:
        assert r.source == "logprobs"
        assert all(math.isfinite(p) for p in r.probs)
        assert abs(sum(r.probs) - 1) < 1e-9
        assert all(lp is not None and lp < 0 for lp in r.logprobs)


@pytest.mark.slow
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


def reference_logprobs(backend, prompt: ScoringPrompt, candidates: list[str]) -> list[float]:
    """Each candidate's log-prob from plain full forward passes, nothing cached, shared or folded.

    The prompt is the tokenizer's chat template plus the answer prefix; a candidate is spelled as written or
    with a leading space, and a spelling's probability is the product of its tokens' next-token
    probabilities (teacher forcing). A candidate's probability is the sum over its spellings, less the
    spellings of other candidates that continue one of them ("10" after "1": the answer "1" ends there).
    """
    import torch

    tok, model = backend.tok, backend.model
    text = tok.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False) + prompt.answer_prefix
    ids = tok(text, add_special_tokens=False)["input_ids"]
    spell = {}
    for c in candidates:
        spell[c] = []
        for t in (c, " " + c):
            s = tuple(tok(t, add_special_tokens=False)["input_ids"])
            if s not in spell[c]:
                spell[c].append(s)
    after: dict[tuple, torch.Tensor] = {}  # next-token log-probs after the prompt and these tokens: one full pass each

    def next_lp(ctx: tuple) -> torch.Tensor:
        if ctx not in after:
            with torch.inference_mode():
                after[ctx] = torch.log_softmax(model(input_ids=torch.tensor([ids + list(ctx)])).logits[0, -1].double(), dim=-1)
        return after[ctx]

    prob = {s: math.exp(sum(float(next_lp(s[:j])[t]) for j, t in enumerate(s))) for v in spell.values() for s in v}
    out = []
    for c in candidates:
        longer = {t for d in candidates if d != c for t in spell[d] if any(len(t) > len(s) and t[: len(s)] == s for s in spell[c])}
        out.append(math.log(sum(prob[s] for s in spell[c]) - sum(prob[t] for t in longer)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("candidates", [["1", "2"], [str(i) for i in range(1, 11)]], ids=["1-2", "1-10"])
def test_candidate_logprobs_equal_a_plain_forward_pass(embedded_backend, candidates):
    """The scored log-probs are the model's: equal to plain forward passes over prompt + candidate tokens.

    1..10: '10' is two tokens here (its mass is taken out of '1'), so extension passes run; 1..2 fold the
    leading space into the prompt's pass. The backend's default (CPU: varlen, or grouped for 1..10) is checked."""
    prompts = _pair_prompts()
    res = embedded_backend.choice_probs(prompts, candidates)
    ref = [reference_logprobs(embedded_backend, p, candidates) for p in prompts]
    for r, want in zip(res, ref):
        assert max(abs(a - b) for a, b in zip(r.logprobs, want)) < 1e-3, f"log-probs {r.logprobs} != plain pass {want}"
        assert max(abs(a - b) for a, b in zip(r.probs, normalise(want))) < 1e-4, f"probs {r.probs} != plain pass {normalise(want)}"
    # the reference is not trivial: the prompts' answers differ, and no candidate is left at the floor
    assert max(abs(a - b) for a, b in zip(normalise(ref[0]), normalise(ref[1]))) > 1e-2
    assert all(lp > -40 for v in ref for lp in v)


STRATEGY_PROMPTS = [
    # three pairs, the longest first: chunks of batched (sorted by length) come back in another order,
    # and groups and suffixes of unequal lengths are padded
    *_pair_prompts_of([("Name a colour of the clear daytime sky, in one word please, and nothing else.", "Blue.", "Green, and it is made of cheese, as everyone knows.")]),
    *_pair_prompts_of([("What is 2+2?", "4", "5"), ("Is ice cold?", "Yes, it is.", "No.")]),
]


def _with_strategy(backend, strategy: str):
    from aifeedback.backends.transformers import TransformersBackend

    return TransformersBackend(backend.cfg.model_copy(update={"score_strategy": strategy, "score_batch_size": 4}))  # the model is loaded once per process


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("candidates", [["1", "2"], [str(i) for i in range(1, 11)]], ids=["1-2", "1-10"])
def test_batched_strategy_equals_grouped_on_cpu(embedded_backend, candidates):
    """batched (the CUDA default: padded rows, masks and explicit positions, in chunks) runs on CPU too, and
    gives grouped's probabilities (and varlen's, where it applies) to 1e-5."""
    from aifeedback.backends.transformers.varlen import varlen_supported

    got = {s: _with_strategy(embedded_backend, s).choice_probs(STRATEGY_PROMPTS, candidates) for s in ("grouped", "batched", "varlen")}
    grouped = [p for r in got["grouped"] for p in r.probs]
    for s in ("batched", "varlen"):
        other = [p for r in got[s] for p in r.probs]
        assert len(other) == len(grouped) == len(STRATEGY_PROMPTS) * len(candidates)
        assert max(abs(a - b) for a, b in zip(grouped, other)) < 1e-5, f"{s} differs from grouped"
        assert [r.prompt_tokens for r in got[s]] == [r.prompt_tokens for r in got["grouped"]]
    assert varlen_supported(embedded_backend, embedded_backend.candidate_variants(candidates)) == (candidates == ["1", "2"])
    rotated = grouped[len(candidates) :] + grouped[: len(candidates)]
    assert max(abs(a - b) for a, b in zip(grouped, rotated)) > 1e-3  # the probabilities differ between prompts


@pytest.mark.slow
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
