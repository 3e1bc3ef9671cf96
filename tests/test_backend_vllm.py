"""The vllm backend, tested without a GPU: against a STAND-IN for the ``vllm`` package.

Real vLLM cannot run here (no GPU, no wheel for this machine). ``tests/vllm_standin/vllm``
is shaped on the vLLM 0.33.0 API the backend calls (its docstring cites the files) and
runs a tiny random-weight Llama (the embedded SmolLM2 tokenizer) with transformers on the
CPU, so its log-probs are real. Each answer is checked against a plain forward pass of
the same weights, computed here independently of both the backend and the stand-in.
A release before 0.20.0 (no ``SamplingParams.logprob_token_ids``) is emulated by taking
that field out of the stand-in's ``SamplingParams``.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

from aifeedback import usage
from aifeedback.backends.base import Backend, ScoringPrompt
from aifeedback.config import BackendConfig, SamplingConfig, VLLMBackendConfig
from aifeedback.errors import BackendError, ConfigError

STANDIN = Path(__file__).resolve().parent / "vllm_standin"
CONTEXT = 512  # the tiny model's max_position_embeddings, so the engine's max_model_len


@pytest.fixture(scope="module")
def vllm_standin():
    """``import vllm`` finds the stand-in while this module runs; nothing of it stays after."""
    assert "vllm" not in sys.modules, "a vllm module is already imported; the stand-in would not be the one used"
    sys.path.insert(0, str(STANDIN))
    import vllm

    assert vllm.STANDIN and Path(vllm.__file__).is_relative_to(STANDIN)
    yield vllm
    sys.path.remove(str(STANDIN))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-weight Llama folder with the embedded tokenizer; large init so its next-token distributions are peaked."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aifeedback.models import resolve

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=CONTEXT, initializer_range=0.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Reference:
    """Known answers: the same weights through a plain transformers forward pass, nothing shared with the backend."""

    def __init__(self, path: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self._memo: dict[tuple, torch.Tensor] = {}  # next_lp by prompt: a full forward pass each, no cache

    def ids(self, messages, answer_prefix: str = "") -> list[int]:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + answer_prefix
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def next_lp(self, ids: list[int]) -> torch.Tensor:
        key = tuple(ids)
        if key not in self._memo:
            with torch.no_grad():
                self._memo[key] = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        return self._memo[key]

    def seq_lp(self, ids: list[int], seq: list[int]) -> float:
        return sum(float(self.next_lp(ids + seq[:d])[t]) for d, t in enumerate(seq))

    def spellings(self, cand: str) -> list[list[int]]:
        out = []
        for text in (cand, " " + cand.lstrip()):
            t = self.tok(text, add_special_tokens=False)["input_ids"]
            if t not in out:
                out.append(t)
        return out

    def candidate_lps(self, ids: list[int], cands: list[str]) -> list[float]:
        """The project's definition: spellings as written and with a leading space, added; less longer candidates' spellings."""
        sp = [self.spellings(c) for c in cands]
        prob = {tuple(s): math.exp(self.seq_lp(ids, s)) for v in sp for s in v}
        out = []
        for k, mine in enumerate(sp):
            p = sum(prob[tuple(s)] for s in mine)
            longer = {tuple(t) for j, other in enumerate(sp) if j != k for t in other for s in mine if len(t) > len(s) and t[: len(s)] == s}
            out.append(math.log(max(p - sum(prob[t] for t in longer), p * 1e-6, 1e-30)))
        return out

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out = []
        for _ in range(n):
            t = int(self.next_lp(ids + out).argmax())
            out.append(t)
            if t == self.tok.eos_token_id:
                break
        return out


@pytest.fixture(scope="module")
def ref(tiny):
    return Reference(tiny)


def make(tiny, vllm_standin, **kw):
    from aifeedback.backends.vllm_engine import VLLMBackend

    return VLLMBackend(VLLMBackendConfig(model=str(tiny), **kw))


@pytest.fixture
def backend(tiny, vllm_standin):
    return make(tiny, vllm_standin)


@pytest.fixture
def old_backend(tiny, vllm_standin, monkeypatch):
    """The backend on an emulated vLLM 0.19.1: SamplingParams without logprob_token_ids."""
    fields = tuple(f for f in vllm_standin.SamplingParams.__struct_fields__ if f != "logprob_token_ids")
    monkeypatch.setattr(vllm_standin.SamplingParams, "__struct_fields__", fields)
    monkeypatch.setattr(vllm_standin, "__version__", "0.19.1")
    with pytest.raises(TypeError, match="Unexpected keyword argument 'logprob_token_ids'"):
        vllm_standin.SamplingParams(logprob_token_ids=[1])
    return make(tiny, vllm_standin)


def engine_backend(engine: str, request):
    """The backend on vLLM 0.33.0 ("token_ids") or on an emulated 0.19.1 ("top_logprobs"); the emulation holds for the whole test."""
    return request.getfixturevalue("backend" if engine == "token_ids" else "old_backend")


def judge_prompts() -> list[ScoringPrompt]:
    """Two pairs, both orders each, adjacent, as the labeler lists them."""
    pre = "You compare two answers to a question and say which one is better. Be strict and fair.\n\n"
    out = []
    for q, a, b in (("What is 2+2?", "4", "5"), ("Name a colour of the clear daytime sky.", "Blue.", "Green.")):
        for x, y in ((a, b), (b, a)):
            out.append(ScoringPrompt([{"role": "user", "content": f"{pre}Question: {q}\nAnswer 1: {x}\nAnswer 2: {y}\nWhich is better, 1 or 2?"}], "Better answer:"))
    return out


def word_candidates(ref: Reference, ids: list[int]) -> tuple[list[str], list[str]]:
    """Words (one token, a leading space, so one spelling) the model ranks in its top 20 after ``ids``, and far outside it."""
    lp = ref.next_lp(ids)
    order = lp.argsort(descending=True).tolist()

    def word(t):
        text = ref.tok.decode([t])
        ok = text.startswith(" ") and text.strip().isalpha() and ref.spellings(text) == [[t]]
        return text if ok else None

    inside = [w for w in map(word, order[:20]) if w][:2]
    outside = [w for w in map(word, order[1000:1200]) if w][:1]
    assert len(inside) == 2 and len(outside) == 1, "the tiny model's top 20 should hold two plain words"
    return inside, outside


# --- capability flags and construction -----------------------------------------------------------------------


def test_capabilities_and_engine_settings(backend, vllm_standin, ref, tiny):
    from aifeedback.backends import make_backend

    assert isinstance(backend, Backend)
    caps = backend.capabilities
    assert (caps.logprobs, caps.prefix_reuse, caps.in_process, caps.token_counts_exact, caps.tokenizer) == (True, True, True, True, True)
    assert caps.max_context == backend.max_context == CONTEXT == backend.llm.llm_engine.model_config.max_model_len
    args = backend.llm.engine_args
    assert args["enable_prefix_caching"] is True and args["max_logprobs"] == 20 and args["tensor_parallel_size"] == 1
    assert "data_parallel_size" not in args and "max_model_len" not in args  # no max_context set: the model's own
    assert backend.token_ids and backend.vllm_version == "0.33.0"
    chat = [{"role": "user", "content": "How many legs has a spider?"}]
    assert backend.tokenizer.count_chat(chat) == len(ref.ids(chat))
    assert backend.tokenizer.decode(backend.tokenizer.encode(" eight legs")) == " eight legs"
    built = make_backend(BackendConfig(kind="vllm", model=str(tiny), max_context=128, tensor_parallel_size=1, dtype="bfloat16"))
    assert type(built).__name__ == "VLLMBackend" and built.capabilities.max_context == 128
    assert built.llm.engine_args["max_model_len"] == 128 and built.llm.engine_args["dtype"] == "bfloat16"


def test_data_parallel_and_missing_vllm_say_what_to_do(tiny, vllm_standin, monkeypatch):
    with pytest.raises(ConfigError, match=r"--workers 2.*`vllm serve` \(its data-parallel-size option\)"):
        make(tiny, vllm_standin, data_parallel_size=2)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(BackendError, match=r"pip install 'aifeedback\[vllm\]'"):
        make(tiny, vllm_standin)


def test_settings_vllm_refuses_are_a_backend_error(backend):
    chat = [[{"role": "user", "content": "Hello"}]]
    with pytest.raises(BackendError, match=r"temperature must be in \[0, 2\], got 3.0"):
        backend.generate(chat, SamplingConfig(temperature=3.0, max_new_tokens=4))


# --- reading log-probs: top-k, outside it, multi-token ------------------------------------------------------


@pytest.mark.parametrize("engine", ["token_ids", "top_logprobs"])
def test_single_token_candidates_inside_and_outside_the_top_k(engine, request, ref):
    b = engine_backend(engine, request)
    p = judge_prompts()[0]
    ids = ref.ids(p.messages, p.answer_prefix)
    inside, outside = word_candidates(ref, ids)
    cands = inside + outside
    want = [float(ref.next_lp(ids)[ref.spellings(c)[0][0]]) for c in cands]
    b.llm.calls.clear()
    (r,) = b.choice_probs([p], cands)
    assert r.source == "logprobs" and r.prompt_tokens == len(ids) and not r.truncated
    assert r.logprobs == pytest.approx(want, abs=1e-5)  # exact, also for the word ranked past 1000
    total = sum(math.exp(v) for v in want)
    assert r.probs == pytest.approx([math.exp(v) / total for v in want], abs=1e-6)
    (call,) = b.llm.calls[:1]
    if engine == "token_ids":  # one request listing exactly the three tokens
        assert len(b.llm.calls) == 1 and len(call) == 1
        (req_ids, sp) = call[0]
        assert req_ids == ids and sp.logprob_token_ids == sorted(ref.spellings(c)[0][0] for c in cands) and sp.logprobs == 3 and sp.max_tokens == 1
    else:  # the top 20 first; the word outside it is scored through prompt_logprobs on prompt + word, alone
        assert [(len(req), sp.logprobs) for req, sp in call] == [(len(ids), 20)]
        (rest,) = b.llm.calls[1:]
        assert [req for req, _ in rest] == [ids + ref.spellings(outside[0])[0]] and rest[0][1].prompt_logprobs == 0


@pytest.mark.parametrize("engine", ["token_ids", "top_logprobs"])
def test_multi_token_candidates(engine, request, ref):
    b = engine_backend(engine, request)
    prompts = judge_prompts()[:2]
    cands = ["1", "2", "10", "Neither"]  # " 1" is two tokens; "10" starts with "1"; "Neither" two or more
    assert any(len(s) > 1 for c in cands for s in ref.spellings(c))
    res = b.choice_probs(prompts, cands)
    for p, r in zip(prompts, res):
        ids = ref.ids(p.messages, p.answer_prefix)
        want = ref.candidate_lps(ids, cands)
        assert r.logprobs == pytest.approx(want, abs=1e-5)
        total = sum(math.exp(v) for v in want)
        assert r.probs == pytest.approx([math.exp(v) / total for v in want], abs=1e-6)
    if engine == "token_ids":  # no prompt_logprobs: every request may read the prefix cache
        assert all(sp.prompt_logprobs is None and sp.logprob_token_ids for call in b.llm.calls for _, sp in call)


@pytest.mark.parametrize("engine", ["token_ids", "top_logprobs"])
def test_a_candidate_loses_the_mass_of_longer_ones(engine, request, ref):
    """A word and the word followed by the model's likeliest next token: the word's share excludes the longer one."""
    b = engine_backend(engine, request)
    p = judge_prompts()[2]
    ids = ref.ids(p.messages, p.answer_prefix)
    inside, _ = word_candidates(ref, ids)
    pairs = []
    for w in inside:
        (wid,) = ref.spellings(w)[0]
        for x in ref.next_lp(ids + [wid]).argsort(descending=True).tolist()[:5]:
            if ref.spellings(ref.tok.decode([wid, x])) == [[wid, x]]:
                pairs.append((w, ref.tok.decode([wid, x])))
                break
    assert pairs, "no word whose likeliest continuation spells back"
    short, long = pairs[0]
    want = ref.candidate_lps(ids, [short, long])
    assert want[0] < math.log(math.exp(ref.seq_lp(ids, ref.spellings(short)[0]))) - 0.01  # the subtraction matters here
    (r,) = b.choice_probs([p], [short, long])
    assert r.logprobs == pytest.approx(want, abs=1e-5)


def test_many_candidates_split_across_requests(backend, ref):
    """More candidate tokens than max_logprobs (20): the ids are listed 20 at a time, each still exact."""
    p = judge_prompts()[1]
    ids = ref.ids(p.messages, p.answer_prefix)
    words = []
    for t in ref.next_lp(ids).argsort().tolist():  # least likely first: far outside any top-k
        text = ref.tok.decode([t])
        if text.startswith(" ") and text.strip().isalpha() and ref.spellings(text) == [[t]]:
            words.append(text)
        if len(words) == 45:
            break
    backend.llm.calls.clear()
    (r,) = backend.choice_probs([p], words)
    assert r.logprobs == pytest.approx([float(ref.next_lp(ids)[ref.spellings(w)[0][0]]) for w in words], abs=1e-5)
    (call,) = backend.llm.calls
    assert [len(sp.logprob_token_ids) for _, sp in call] == [20, 20, 5] and all(req == ids for req, _ in call)


def test_agrees_with_the_transformers_backend(backend, tiny):
    """The same weights through both backends: one definition of a candidate's probability."""
    from aifeedback.backends import make_backend

    tf = make_backend(BackendConfig(kind="transformers", model=str(tiny), device="cpu", dtype="float32"))
    prompts, cands = judge_prompts(), ["1", "2", "10"]
    for a, b in zip(backend.choice_probs(prompts, cands), tf.choice_probs(prompts, cands)):
        assert a.probs == pytest.approx(b.probs, abs=1e-5)
        assert a.prompt_tokens == b.prompt_tokens


# --- truncation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["token_ids", "top_logprobs"])
def test_truncation_keeps_head_and_end_and_fits_the_context(engine, tiny, vllm_standin, ref, monkeypatch, request):
    if engine == "top_logprobs":
        request.getfixturevalue("old_backend")  # emulate 0.19.1 for the backend built below
    b = make(tiny, vllm_standin, max_context=96)
    long = ScoringPrompt([{"role": "user", "content": "Tell me about the sea. " * 60 + "Which is better, 1 or 2?"}], "Better answer:")
    short = judge_prompts()[0]
    cands = ["1", "2", "10"]
    longest = max(len(s) for c in cands for s in ref.spellings(c))
    full = ref.ids(long.messages, long.answer_prefix)
    budget = 96 - longest
    cut = full[: budget // 4] + full[len(full) - (budget - budget // 4) :]
    r_long, r_short = b.choice_probs([long, short], cands)
    assert r_long.truncated and r_long.prompt_tokens == budget == len(cut)
    assert not r_short.truncated and r_short.prompt_tokens == len(ref.ids(short.messages, short.answer_prefix))
    assert r_long.logprobs == pytest.approx(ref.candidate_lps(cut, cands), abs=1e-5)  # scored on head + end
    assert all(len(req) <= 96 for call in b.llm.calls for req, _ in call)  # prompt + spelling fit the engine
    # generation keeps room for the completion
    chat = long.messages
    (res,) = b.generate([chat], SamplingConfig(temperature=0, max_new_tokens=16), seeds=[[0]])
    (c,) = res.completions
    whole = ref.ids(chat)
    assert c.prompt_truncated and c.prompt_tokens == 96 - 16
    sent = b.llm.calls[-1][0][0]
    assert sent == whole[:20] + whole[len(whole) - 60 :]


# --- token counts, generation --------------------------------------------------------------------------------


def test_generation_token_counts_and_usage(backend, ref):
    chats = [[{"role": "user", "content": "Say something about rivers."}], [{"role": "user", "content": "Name three birds, please."}]]
    params = SamplingConfig(temperature=0, max_new_tokens=12, n=2)
    with usage.meter() as m:
        res = backend.generate(chats, params, seeds=[[1, 2], [3, 4]])
    calls = backend.llm.calls[-1]
    assert [sp.seed for _, sp in calls] == [1, 2, 3, 4] and [sp.max_tokens for _, sp in calls] == [12] * 4
    for chat, r in zip(chats, res):
        ids = ref.ids(chat)
        want = ref.greedy(ids, 12)
        for c in r.completions:
            assert c.prompt_tokens == len(ids) and not c.prompt_truncated
            assert c.completion_tokens == len(want) and c.text == ref.tok.decode(want, skip_special_tokens=True).strip()
            assert c.finish_reason == ("stop" if want[-1] == ref.tok.eos_token_id else "length")
    done = [c for r in res for c in r.completions]
    assert (m.requests, m.prompt_tokens, m.completion_tokens) == (4, sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done))
    assert backend.stats.tokens_generated == m.completion_tokens and backend.stats.chats_generated == 2


def test_sampling_is_seeded(backend):
    chat = [[{"role": "user", "content": "Write a word."}]]
    params = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8, n=2)
    a = [c.text for c in backend.generate(chat, params, seeds=[[5, 6]])[0].completions]
    b = [c.text for c in backend.generate(chat, params, seeds=[[5, 6]])[0].completions]
    assert a == b and a[0] != a[1]


def test_scoring_token_counts_and_prefix_order(request, ref):
    prompts = judge_prompts()
    want = [len(ref.ids(p.messages, p.answer_prefix)) for p in prompts]
    for engine in ("token_ids", "top_logprobs"):
        b = engine_backend(engine, request)
        b.llm.calls.clear()
        with usage.meter() as m:
            res = b.choice_probs(prompts, ["1", "2"])
        assert [r.prompt_tokens for r in res] == want
        assert (m.requests, m.prompt_tokens, m.completion_tokens) == (4, sum(want), 0)
        # each call sends the prompts in order, a prompt's requests together: both orders of a pair follow each other
        for call in b.llm.calls:
            owner = [next(i for i, p in enumerate(prompts) if req[: want[i]] == ref.ids(p.messages, p.answer_prefix)) for req, _ in call]
            assert owner == sorted(owner) and set(owner) == {0, 1, 2, 3}
        sent = sum(len(req) for call in b.llm.calls for req, _ in call)
        if engine == "token_ids":  # plain requests read the prefix cache: the shared text is computed once
            assert b.stats.tokens_prefilled < sent / 2
        else:  # requests with prompt_logprobs recompute their whole prompt
            assert b.stats.tokens_prefilled > sent / 2
