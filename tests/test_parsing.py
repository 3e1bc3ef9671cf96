"""Unit tests of reply parsing and normalisation (scripted replies, no model)."""

import math

import pytest

from aifeedback.backends.base import derive_seed, normalise, parse_choice
from aifeedback.backends.openai_compat import OpenAIBackend


def _reply(content, top=None):
    choice = {"message": {"content": content}, "finish_reason": "stop"}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}
    return {"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 1}}


def test_normalise():
    p = normalise([math.log(0.2), math.log(0.6)])
    assert p == pytest.approx([0.25, 0.75])
    assert normalise([None, None]) is None
    assert normalise([None, -1.0]) == [0.0, 1.0]
    assert normalise([None, -1.0], floor=-1.0) == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize(
    "text, expected",
    [("1", 0), (" 2.", 1), ("Response 2 is better", 1), ("I prefer 10", 9), ("none", None), ("21", None)],
)
def test_parse_choice(text, expected):
    cands = [str(i) for i in range(1, 11)]
    assert parse_choice(text, cands) == expected


def test_read_choice_sums_token_spellings():
    r = OpenAIBackend._read_choice(_reply("1", [("1", math.log(0.5)), (" 1", math.log(0.1)), ("2", math.log(0.2)), ("The", math.log(0.1))]), ["1", "2"], 0)
    assert r.source == "logprobs"
    assert r.probs == pytest.approx([0.75, 0.25])


def test_read_choice_missing_candidate_gets_the_floor():
    r = OpenAIBackend._read_choice(_reply("1", [("1", -0.1), ("The", -3.0)]), ["1", "2"], 0)
    assert r.logprobs[1] is None and r.probs[1] == pytest.approx(math.exp(-3.0) / (math.exp(-3.0) + math.exp(-0.1)))


def test_read_choice_falls_back_to_parsed_text():
    r = OpenAIBackend._read_choice(_reply("Response 2"), ["1", "2"], 1)
    assert r.source == "parsed" and r.probs == [0.0, 1.0] and r.retries == 1


def test_read_choice_unparseable_keeps_raw():
    r = OpenAIBackend._read_choice(_reply("I cannot decide"), ["1", "2"], 0)
    assert r.source == "unparseable" and r.probs is None and r.raw == "I cannot decide"


def test_read_choice_bad_shape():
    r = OpenAIBackend._read_choice({"nope": 1}, ["1", "2"], 0)
    assert r.source == "unparseable" and "shape" in r.error


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "p", 1) == derive_seed(0, "p", 1)
    assert len({derive_seed(0, "p", j) for j in range(100)}) == 100
