"""The transformers backend and the trainers on a GPU (issue 26), on tiny Llama models built from a config.

Tests marked ``gpu`` run only where CUDA is present. The device decoder's sampling (the path a GPU takes) is
also tested here on CPU, unmarked: it is plain torch and gives the same draws on any device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aifeedback.backends.base import ScoringPrompt
from aifeedback.config import SamplingConfig

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[1]
TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _tok_dir() -> Path:
    """The embedded SmolLM2 tokenizer's files: bench/gpu.py's assets (carried to a GPU machine), else the converted model."""
    for d in (REPO / ".aif-cache" / "gpu-bench" / "tok",):
        if (d / "tokenizer.json").is_file():
            return d
    from aifeedback.models import resolve

    return resolve("embedded/smollm2-135m-instruct").path


def _tiny_model_dir(d: Path, arch: str = "Llama", **extra) -> Path:
    """A folder holding a tiny random decoder (fp32) of ``arch`` and the embedded tokenizer, loadable by the backend."""
    import transformers
    from transformers import AutoTokenizer

    src = _tok_dir()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = getattr(transformers, f"{arch}Config")(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, tie_word_embeddings=True,
                                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)
    torch.manual_seed(0)
    getattr(transformers, f"{arch}ForCausalLM")(cfg).save_pretrained(d)
    for f in TOK_FILES:
        if (src / f).is_file():
            shutil.copyfile(src / f, d / f)
    return d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _backend(d: Path, device: str, **kw):
    from aifeedback.backends.transformers import TransformersBackend
    from aifeedback.config import TransformersBackendConfig

    return TransformersBackend(TransformersBackendConfig(model=str(d), device=device, dtype="float32", **kw))


def _pair_prompts(n: int = 6) -> list[ScoringPrompt]:
    pre = "Compare the two answers and say which is better.\n\n"
    out = []
    for i in range(n):
        q, a, b = f"Question {i}: what is {i}+{i}?" + " Please explain." * (i % 3), str(2 * i), f"{2 * i + 1}, and here is why." * (1 + i % 2)
        for x, y in ((a, b), (b, a)):
            out.append(ScoringPrompt([{"role": "user", "content": f"{pre}{q}\nAnswer 1: {x}\nAnswer 2: {y}\nWhich answer is better, 1 or 2?"}], "Better answer:"))
    return out


# ------------------------------------------------------------------ the device sampler, on any device (CPU here)
def test_exponential_race_draws_from_the_nucleus():
    from aifeedback.backends.transformers.decoding import row_keys, sample_on_device

    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    n = 40000
    keys = row_keys(torch.arange(n, dtype=torch.int64))
    full = torch.bincount(sample_on_device(p.log().repeat(n, 1), SamplingConfig(temperature=1.0, top_p=1.0), keys, 0), minlength=4) / n
    assert torch.allclose(full, p[0], atol=0.01)
    nucleus = torch.bincount(sample_on_device(p.log().repeat(n, 1), SamplingConfig(temperature=1.0, top_p=0.9), keys, 5), minlength=4) / n
    assert nucleus[3] == 0 and torch.allclose(nucleus[:3], p[0, :3] / 0.95, atol=0.01)


def test_device_draw_of_a_row_does_not_depend_on_its_batch():
    from aifeedback.backends.transformers.decoding import row_keys, sample_on_device

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5000, generator=g) * 3
    keys = row_keys(torch.arange(100, 108, dtype=torch.int64))
    params = SamplingConfig(temperature=0.7, top_p=0.95)
    for step in range(5):
        both = sample_on_device(logits, params, keys, step)
        alone = torch.cat([sample_on_device(logits[i : i + 1], params, keys[i : i + 1], step) for i in range(8)])
        assert torch.equal(both, alone)
    assert len({int(sample_on_device(logits[:1], params, keys[:1], s)) for s in range(20)}) > 3  # random, not the argmax


def _decode_rows(d: Path, device: str, on_device: bool, batch: int, params: SamplingConfig, prompts, seeds):
    b = _backend(d, device, gen_batch_size=batch)
    b.device_decode = on_device
    return b.sample_tokens(prompts, params, seeds)


def test_device_decoder_on_cpu_is_seeded_per_row_and_greedy_matches_the_cpu_path(tiny_dir):
    b = _backend(tiny_dir, "cpu")
    prompts = [b.encode(b.render([{"role": "user", "content": f"Tell me about the number {i}." * (1 + i % 3)}])) for i in range(6)]
    params = SamplingConfig(max_new_tokens=12, temperature=0.8, top_p=0.9)
    seeds = [11, 12, 13, 14, 15, 16]
    big = _decode_rows(tiny_dir, "cpu", True, 6, params, prompts, seeds)
    small = _decode_rows(tiny_dir, "cpu", True, 2, params, prompts, seeds)
    assert big == small
    assert len({tuple(t) for t, _ in big}) > 1
    greedy = SamplingConfig(max_new_tokens=12, temperature=0)
    assert _decode_rows(tiny_dir, "cpu", True, 6, greedy, prompts, seeds) == _decode_rows(tiny_dir, "cpu", False, 6, greedy, prompts, seeds)


def _host_reads(fn):
    """(fn(), how many times it read a tensor's value on the host): .item(), bool(t) and the scalar copy under them.
    On a GPU each of these waits for the device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in reads:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        out = fn()
    return out, Count.n


def test_device_decoder_reads_the_host_only_every_sync_interval(tiny_dir):
    """With a 2D padding mask, transformers' SDPA mask builder reads the mask on the host at every step (51 reads
    for 48 tokens); the device path passes a prebuilt 4D mask, so only the stop check every SYNC_EVERY steps reads."""
    from aifeedback.backends.transformers.decoding import SYNC_EVERY, decode_on_device

    b = _backend(tiny_dir, "cpu")
    prompts = [b.encode(b.render([{"role": "user", "content": f"Tell me about {i}." * (1 + i % 3)}])) for i in range(6)]  # padded rows
    out, n = _host_reads(lambda: decode_on_device(b, prompts, SamplingConfig(max_new_tokens=48, temperature=0.8, top_p=0.9), list(range(6))))
    assert all(len(t) == 48 for t, _ in out)
    assert n == (48 - 1) // SYNC_EVERY, n  # steps 15 and 31 look at the stop flags; step 47 is the last


@pytest.mark.parametrize("arch, attn, extra", [("Llama", "sdpa", {}), ("Llama", "eager", {}), ("Mistral", "sdpa", {"sliding_window": 8}),
                                               ("Mistral", "eager", {"sliding_window": 8})])
def test_device_decoder_rows_in_a_padded_batch_equal_each_row_alone(tmp_path, arch, attn, extra):
    """The masks the device path builds: sampled rows decoded in one left-padded batch draw exactly what each row
    draws alone (no padding, no mask). A mask that let a row see padding, or the future, or (Mistral, window 8,
    prompts of 30+ tokens) keys outside its sliding window, changes the draws."""
    from aifeedback.backends.transformers.decoding import decode_on_device

    b = _backend(_tiny_model_dir(tmp_path / arch, arch, **extra), "cpu")
    b.model.set_attn_implementation(attn)
    prompts = [b.encode(b.render([{"role": "user", "content": f"Tell me about the number {i}." * (1 + i % 3)}])) for i in range(5)]
    assert len({len(p) for p in prompts}) == 3 and min(len(p) for p in prompts) > 30
    params, seeds = SamplingConfig(max_new_tokens=24, temperature=0.9, top_p=0.95), [7, 8, 9, 10, 11]
    batch = decode_on_device(b, prompts, params, seeds)
    alone = [decode_on_device(b, [p], params, [s])[0] for p, s in zip(prompts, seeds)]
    assert batch == alone
    assert len({tuple(t) for t, _ in batch}) == 5


def test_device_decoder_stops_rows_at_eos_and_leaves_the_loop_early(tiny_dir):
    """Known answer: a seeded row draws the same tokens whatever stops it, so with stop tokens added each row is its
    free run cut at its first stop token (finish "stop"); once every row has stopped, the loop ends at the next look
    at the stop flags instead of running max_new_tokens."""
    from aifeedback.backends.transformers.decoding import SYNC_EVERY, decode_on_device

    b = _backend(tiny_dir, "cpu")
    prompts = [b.encode(b.render([{"role": "user", "content": f"Name a colour, {i}." * (1 + i % 2)}])) for i in range(5)]
    params, seeds = SamplingConfig(max_new_tokens=48, temperature=0.8, top_p=0.9), [1, 2, 3, 4, 5]
    free = decode_on_device(b, prompts, params, seeds)
    assert all(len(t) == 48 and f == "length" for t, f in free)
    saved = b.eos_set
    b.eos_set = frozenset(t[2 + 2 * r] for r, (t, _) in enumerate(free))  # row r's token at step 2 + 2r now ends a row
    try:
        want = []
        for t, _ in free:
            cut = next(i for i, x in enumerate(t) if x in b.eos_set)
            want.append((t[:cut], "stop"))
        assert len({len(t) for t, _ in want}) > 2  # rows stop at different steps
        calls = []
        forward = b.forward
        b.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
        got = decode_on_device(b, prompts, params, seeds)
        b.forward = forward
        assert got == want
        assert len(calls) == SYNC_EVERY  # the prefill and steps 0-14; step 15 sees every row stopped (48 without the check)
    finally:
        b.eos_set = saved


# ------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("strategy", ["auto", "batched", "grouped", "varlen"])
def test_cuda_scoring_agrees_with_cpu(tiny_dir, strategy):
    prompts = _pair_prompts()
    ref = _backend(tiny_dir, "cpu", score_strategy="varlen").choice_probs(prompts, ["1", "2"])
    got = _backend(tiny_dir, "cuda", score_strategy=strategy).choice_probs(prompts, ["1", "2"])
    diff = max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r.probs, g.probs))
    assert diff <= 1e-3, f"{strategy}: max |dp| {diff}"


@pytest.mark.gpu
@gpu
def test_cuda_auto_sizes_batches_by_device_memory(tiny_dir):
    rows, tokens = _backend(tiny_dir, "cuda").device_score_batch()
    assert tokens > 12288 and rows > 32
    assert _backend(tiny_dir, "cuda", score_batch_tokens=4096, score_batch_size=8).device_score_batch() == (8, 4096)


@pytest.mark.gpu
@gpu
def test_cuda_default_dtype_is_bf16_and_scoring_stays_within_bf16_noise(tiny_dir):
    """dtype "device" loads bfloat16 on a GPU with bf16 units; every strategy then agrees with fp32 CPU to bf16 noise
    (8 mantissa bits: 0.02 on a probability), and the decoder runs."""
    from aifeedback.backends.transformers import TransformersBackend
    from aifeedback.config import TransformersBackendConfig

    prompts = _pair_prompts()
    ref = _backend(tiny_dir, "cpu", score_strategy="varlen").choice_probs(prompts, ["1", "2"])
    want = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    for strategy in ("auto", "batched", "grouped", "varlen"):
        cfg = TransformersBackendConfig(model=str(tiny_dir), device="cuda", score_strategy=strategy)
        assert cfg.identity()["dtype"] == want
        b = TransformersBackend(cfg)
        assert str(b.model.dtype) == f"torch.{want}"
        got = b.choice_probs(prompts, ["1", "2"])
        diff = max(abs(x - y) for r, g in zip(ref, got) for x, y in zip(r.probs, g.probs))
        assert diff <= 0.02, f"{strategy}: max |dp| {diff} in {want}"
    out = b.sample_tokens([b.encode(b.render([{"role": "user", "content": "Hello"}]))] * 3, SamplingConfig(max_new_tokens=8, temperature=0.7), [1, 2, 3])
    assert all(len(t) > 0 for t, _ in out)


@pytest.mark.gpu
@gpu
def test_cuda_gen_batch_is_sized_by_device_memory_unless_set(tiny_dir):
    assert _backend(tiny_dir, "cuda").device_gen_batch(200) > 32
    assert _backend(tiny_dir, "cuda", gen_batch_size=8).device_gen_batch(200) == 8


@pytest.mark.gpu
@gpu
def test_loop_policy_and_reward_model_run_on_cuda(tiny_dir, tmp_path):
    """The loop's sampling backend loads on the GPU in bf16 (where supported); the RM scorer (labeler, GRPO reward,
    evaluators) runs on the GPU and agrees with its CPU scores to fp32 noise."""
    from test_reward_trainer import _rows
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from labelers.rm_labeler import RewardModelScorer
    from trainers.loop.sampling import policy_backend

    pol = policy_backend(str(tiny_dir), None)
    assert pol.device.type == "cuda" and pol.model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    tok = AutoTokenizer.from_pretrained(_tok_dir())
    tok.pad_token = tok.pad_token or tok.eos_token
    torch.manual_seed(0)
    rm = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rows = _rows(8)
    prompts, responses = [r["messages"][0]["content"] for r in rows], [r["response_a"] for r in rows]
    gpu_s = RewardModelScorer(tmp_path / "rm")
    assert gpu_s.device.type == "cuda"
    cpu_s = RewardModelScorer(tmp_path / "rm", device="cpu")
    assert max(abs(a - b) for a, b in zip(gpu_s.score(prompts, responses), cpu_s.score(prompts, responses))) <= 1e-3


@pytest.mark.gpu
@gpu
def test_cuda_decoder_seeds_reproducible_across_batch_sizes(tiny_dir):
    b = _backend(tiny_dir, "cuda")
    prompts = [b.encode(b.render([{"role": "user", "content": f"Say something about {i}." * (1 + i % 4)}])) for i in range(8)]
    params = SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.95)
    seeds = list(range(100, 108))
    runs = [_decode_rows(tiny_dir, "cuda", True, bs, params, prompts, seeds) for bs in (8, 3, 1)]
    assert runs[0] == runs[1] == runs[2]
    assert all(len(t) > 0 for t, _ in runs[0])


@pytest.mark.gpu
@gpu
def test_reward_trainer_step_on_cuda():
    from test_reward_trainer import _rows
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from trainers.reward_config import RewardConfig
    from trainers.reward_trainer import RewardTrainer

    tok = AutoTokenizer.from_pretrained(_tok_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    tr = RewardTrainer(RewardConfig(epochs=1, lr=1e-3, batch_size=8, max_length=32, max_steps=1), model, tok)
    assert next(tr.model.parameters()).device.type == "cuda"
    before = [p.detach().clone() for p in tr.model.parameters()]
    res = tr.train(_rows(8))
    assert len(res.losses) == 1 and res.losses[0] == res.losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


@pytest.mark.gpu
@gpu
def test_dpo_step_on_cuda(tmp_path):
    pytest.importorskip("trl", reason="trl and datasets are not on the lent GPU machine (their wheels would take the carry past 64 MiB)")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainers.rl import train_dpo
    from trainers.rl_config import DPOTrainConfig

    tok = AutoTokenizer.from_pretrained(_tok_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "tiny")
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "Good helpful answer."}],
             "rejected": [{"role": "assistant", "content": "bad"}]} for i in range(4)]
    out = train_dpo(DPOTrainConfig(max_steps=1, lr=1e-3, batch_size=2, max_length=64), rows, str(tmp_path / "out"), model=model, tokenizer=tok)
    assert out["steps"] == 1
    assert next(out["trainer"].model.parameters()).device.type == "cuda"
    assert out["trainer"].args.bf16 == torch.cuda.is_bf16_supported()
    json.dumps(out["losses"])
