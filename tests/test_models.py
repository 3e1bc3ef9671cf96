import pytest

from aifeedback.errors import ModelNotFound
from aifeedback.models import EMBEDDED_POLICY, EMBEDDED_REWARD, describe_defaults, resolve


def test_embedded_models_resolve_offline():
    pol = resolve(EMBEDDED_POLICY)
    assert (pol.path / "model.safetensors").is_file() and (pol.path / "tokenizer.json").is_file()
    rm = resolve(EMBEDDED_REWARD)
    assert (rm.path / "config.json").is_file()


def test_unknown_hub_id_is_an_error_with_the_fix(monkeypatch):
    """No download attempt without AIFEEDBACK_ALLOW_DOWNLOAD; how long it takes is measured by bench/model_load.py."""
    monkeypatch.delenv("AIFEEDBACK_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotFound, match=r"downloads are off.*set AIFEEDBACK_ALLOW_DOWNLOAD=1"):
        resolve("some-org/not-a-cached-model")


def test_bad_paths_and_names():
    with pytest.raises(ModelNotFound, match="No model folder"):
        resolve("./no/such/model")
    with pytest.raises(ModelNotFound, match="Unknown embedded model"):
        resolve("embedded/gpt-9")
    with pytest.raises(ModelNotFound, match="non-empty"):
        resolve("")


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve(str(tmp_path))


def test_describe_defaults_lists_every_role():
    rows = describe_defaults(convert=True)
    assert [r["role"] for r in rows] == ["policy", "labeler", "reward backbone"]
    assert all(r["status"].startswith("ok") for r in rows), rows


def test_any_local_model_replaces_the_default(tmp_path, embedded_backend):
    """A tiny Llama saved to a folder loads through the same path as the embedded one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aifeedback.backends.transformers import TransformersBackend
    from aifeedback.config import BackendConfig, SamplingConfig

    cfg = LlamaConfig(vocab_size=embedded_backend.tok.vocab_size + 100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    embedded_backend.tok.save_pretrained(tmp_path / "tiny")
    b = TransformersBackend(BackendConfig(model=str(tmp_path / "tiny")))
    out = b.generate([[{"role": "user", "content": "hi"}]], SamplingConfig(max_new_tokens=4, temperature=1.0), seeds=[[0]])
    assert out[0].completions[0].completion_tokens >= 1
