"""A decoder (Llama, the family of the embedded SmolLM2-135M) as the reward-model backbone: a value head read at the
last token that is not padding. Tiny Llamas built from a config with the embedded tokenizer (no hub), saved as
folders the way checkpoints ship, go through the real paths: ``RewardConfig.backbone`` -> train -> save -> the RM
labeler's loader. The pad id is what a decoder gets wrong, so each tiny backbone gets it wrong a different way."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainers.reward_config import RewardConfig
from trainers.reward_trainer import RewardResult, RewardTrainer

pytestmark = pytest.mark.slow

PROMPT = "user: Name a colour of the sky."
RESPONSES = ["Blue.", "The sky is usually blue on a clear day, and red or orange at sunset.", "Green", "It is blue, mostly."]


def tiny_llama(path, pad: str):
    """A tiny LlamaForCausalLM folder with the embedded tokenizer, saved with padding_side=left and a pad set-up:
    config_none: no pad id in config.json (the tokenizer pads with <|im_end|>, id 2);
    config_other: config.json says pad id 0 while the tokenizer pads with id 2;
    tokenizer_none: neither the tokenizer nor config.json has a pad."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aifeedback.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("embedded/smollm2-135m-instruct").path)
    if pad == "tokenizer_none":
        tok.pad_token = None
    tok.padding_side = "left"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=0 if pad == "config_other" else None)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rows(n: int = 8) -> list[dict]:
    return [
        {"pair_id": str(i), "messages": [{"role": "user", "content": f"Question {i}: name a colour."}], "response_a": "Blue, like the sky on a clear day." if i % 2 else "Red.", "response_b": "Red." if i % 2 else "Blue, like the sky on a clear day.", "p_a": 0.8 if i % 2 else 0.2}
        for i in range(n)
    ]


def alone_and_batched(score) -> tuple[list[float], list[float]]:
    alone = [score([PROMPT], [r])[0] for r in RESPONSES]
    return alone, score([PROMPT] * len(RESPONSES), RESPONSES)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pad", ["config_none", "config_other", "tokenizer_none"])
def test_tiny_llama_trains_saves_and_labels(tmp_path, pad):
    from transformers import LlamaForSequenceClassification

    from labelers.rm_labeler import RewardModelScorer

    backbone = tiny_llama(tmp_path / "backbone", pad)
    tr = RewardTrainer(RewardConfig(backbone=str(backbone), batch_size=4, max_steps=2, max_length=64, lr=1e-3))
    assert isinstance(tr.model, LlamaForSequenceClassification) and tr.model.config.num_labels == 1
    res = tr.train(rows())
    assert len(res.losses) == 2 and all(math.isfinite(x) for x in res.losses)
    tr.model.eval()
    with torch.no_grad():
        alone, batched = alone_and_batched(lambda p, r: tr.rewards(p, r).tolist())
    assert batched == pytest.approx(alone, abs=1e-5)  # training reads the same token whether or not a row is padded

    out = tr.save(tmp_path / "rm", res)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and saved["pad_token_id"] == tr.tok.pad_token_id == 2
    scorer = RewardModelScorer(out)
    alone, batched = alone_and_batched(scorer.score)
    assert all(math.isfinite(x) for x in alone) and len({round(x, 6) for x in alone}) == len(RESPONSES)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert alone == pytest.approx(tr.rewards([PROMPT] * len(RESPONSES), RESPONSES).tolist(), abs=1e-5)  # the labeler loads what was trained


@pytest.mark.timeout(300)
def test_loader_fixes_a_folder_saved_elsewhere(tmp_path):
    """A one-output Llama reward model saved by another tool: no pad in config.json or the tokenizer, left padding."""
    from labelers.rm_labeler import RewardModelScorer

    backbone = tiny_llama(tmp_path / "backbone", "tokenizer_none")
    tr = RewardTrainer(RewardConfig(backbone=str(backbone), max_length=64))
    out = tr.save(tmp_path / "rm", RewardResult())  # untrained: only the loading is under test
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("pad_token_id")
    (out / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    tcfg.pop("pad_token", None)
    tcfg["padding_side"] = "left"
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg))
    scorer = RewardModelScorer(out)
    alone, batched = alone_and_batched(scorer.score)
    assert batched == pytest.approx(alone, abs=1e-5) and len({round(x, 6) for x in alone}) == len(RESPONSES)


@pytest.mark.timeout(600)
def test_embedded_smollm2_is_a_backbone():
    """The real embedded SmolLM2-135M by its name: a Llama value head whose pad id is the tokenizer's."""
    from transformers import LlamaForSequenceClassification

    tr = RewardTrainer(RewardConfig(backbone="embedded/smollm2-135m-instruct", max_length=48))
    assert isinstance(tr.model, LlamaForSequenceClassification) and tr.model.config.pad_token_id == tr.tok.pad_token_id
    assert sum(p.numel() for p in tr.model.parameters()) > 100_000_000
    tr.model.eval()
    with torch.no_grad():
        alone, batched = alone_and_batched(lambda p, r: tr.rewards(p, r).tolist())
    assert all(math.isfinite(x) for x in alone) and batched == pytest.approx(alone, abs=1e-5)


@pytest.mark.timeout(300)
def test_left_padding_saved_with_a_bert_is_undone(tmp_path):
    """BERT adds absolute position embeddings, so left padding would move every token of a short row: the loader pads on the right."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from aifeedback.models import minilm_dir
    from labelers.rm_labeler import RewardModelScorer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1, max_position_embeddings=128)).save_pretrained(tmp_path / "rm")
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path / "rm")
    scorer = RewardModelScorer(tmp_path / "rm")
    alone, batched = alone_and_batched(scorer.score)
    assert batched == pytest.approx(alone, abs=1e-5) and len({round(x, 6) for x in alone}) == len(RESPONSES)
