"""Stand-in for vllm/logprobs.py (vLLM 0.33.0): ``Logprob`` and the per-position dicts."""

from dataclasses import dataclass


@dataclass
class Logprob:
    """Infos for supporting OpenAI compatible logprobs and token ranks.

    logprob: the log-probability of the token; rank: its vocab rank (>= 1); decoded_token: its text.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


LogprobsOnePosition = dict[int, Logprob]
PromptLogprobs = list[LogprobsOnePosition | None]  # entry 0 is None: the first prompt token has no log-prob
SampleLogprobs = list[LogprobsOnePosition]


def position_entry(first: tuple[int, float, int], listed: list[tuple[int, float]], decode) -> LogprobsOnePosition:
    """One position as vLLM builds it (``append_logprobs_for_next_position``): the scored or sampled token first,
    with its true rank, then the listed tokens numbered 1..k; a token listed twice keeps the later entry."""
    tid, lp, rank = first
    out = {tid: Logprob(lp, rank, decode(tid))}
    for r, (t, v) in enumerate(listed, start=1):
        out[t] = Logprob(v, r, decode(t))
    return out
