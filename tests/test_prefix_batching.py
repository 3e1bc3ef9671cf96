"""Prefix batching (score_strategy varlen): the same probabilities as scoring each pair on its own.

The embedded labeler scores real pairs with each strategy: ``grouped`` (the shared
prefix once, then each pair's context and its two orders alone) and ``varlen``
(many pairs' tokens in one pass for the matrix products, attention per pair). The
pointwise template's candidates 1..10 include a two-token one ("10"), which varlen
hands to grouped.
"""

from __future__ import annotations

import pytest

from aifeedback.config import LabelConfig
from labelers.labeler import Labeler
from labelers.templates import load_template

PAIRS = [
    {"pair_id": "p0", "messages": [{"role": "user", "content": "How do I boil an egg?"}], "response_a": "Put it in boiling water for 8 minutes.", "response_b": "Eggs are laid by hens."},
    {"pair_id": "p1", "messages": [{"role": "user", "content": "What is the capital of France?"}], "response_a": "Paris.", "response_b": "It is Lyon, I believe, though I may be wrong."},
    {"pair_id": "p2", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Tell me a short joke."}], "response_a": "No.", "response_b": "Why did the scarecrow win an award? He was outstanding in his field."},
]


def _probs(backend, strategy: str, method: str, few_shot: bool) -> list[list[float]]:
    old = backend.cfg.score_strategy
    backend.cfg.score_strategy = strategy
    try:
        cfg = LabelConfig(method=method, few_shot=few_shot)
        rows, excluded = Labeler(backend, cfg, load_template(method)).label(PAIRS, "k", "embedded", None)
    finally:
        backend.cfg.score_strategy = old
    assert not excluded and len(rows) == len(PAIRS)
    return [p for r in rows for e in r["option_probs"] for p in e["probs"]]


@pytest.mark.parametrize("method,few_shot", [("pairwise", True), ("pointwise", False)])
def test_varlen_equals_grouped(embedded_backend, method, few_shot):
    from aifeedback.backends.transformers.varlen import varlen_supported

    variants = embedded_backend.candidate_variants(load_template(method).candidates)
    if method == "pointwise":  # the two-token candidate is what makes the extension pass run
        assert any(len(s) > 1 for v in variants for s in v)
    # pairwise runs varlen itself (" 1" folds); pointwise's "10" needs an extension pass: grouped
    assert varlen_supported(embedded_backend, variants) == (method == "pairwise")
    tokens0 = embedded_backend.stats.tokens_prefilled
    grouped = _probs(embedded_backend, "grouped", method, few_shot)
    tokens_grouped = embedded_backend.stats.tokens_prefilled - tokens0
    varlen = _probs(embedded_backend, "varlen", method, few_shot)
    tokens_varlen = embedded_backend.stats.tokens_prefilled - tokens0 - tokens_grouped
    assert len(grouped) == len(varlen) > 0
    assert max(abs(a - b) for a, b in zip(grouped, varlen)) < 1e-5
    assert tokens_varlen == tokens_grouped  # no padding: the same tokens computed
    assert max(abs(a - b) for a, b in zip(grouped, varlen[1:] + varlen[:1])) > 1e-3  # the probabilities differ between prompts


def test_packs_split_at_the_token_cap(embedded_backend, monkeypatch):
    """Groups cut into several packs (a tiny cap) still give the same probabilities."""
    from aifeedback.backends.transformers import varlen

    whole = _probs(embedded_backend, "varlen", "pairwise", False)
    monkeypatch.setattr(varlen, "VARLEN_TOKENS", 64)
    split = _probs(embedded_backend, "varlen", "pairwise", False)
    assert max(abs(a - b) for a, b in zip(whole, split)) < 1e-5


def test_packed_strategy_was_removed():
    """A config that still names the removed packed strategy is refused, with the values it may take."""
    from pydantic import ValidationError

    from aifeedback.config import TransformersBackendConfig

    with pytest.raises(ValidationError, match="'auto', 'grouped', 'varlen' or 'batched'"):
        TransformersBackendConfig(score_strategy="packed")
