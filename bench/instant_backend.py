"""An instant arithmetic backend, for measuring the pipeline without a model.

It implements the backend protocol with arithmetic on the prompt text (no
model): the probability of each option is a fixed function of the text lengths.
Use it to time everything around the model (reading, batching, prompt building,
Prefect, the run store) at millions of pairs:
``--set backend.kind=instant_backend:InstantBackend`` with ``bench/`` on PYTHONPATH.
It is a measuring tool, not a labeler: its verdicts mean nothing.
"""

from __future__ import annotations

import math

from aifeedback.backends.base import BackendStats, Capabilities, ChoiceResult, Completion, GenerationResult


class InstantBackend:
    name = "instant"
    tokenizer = None  # no tokenizer: truncation counts characters, as for a remote endpoint

    def __init__(self, cfg):
        self.model_id = f"instant:{cfg.model}"
        self.capabilities = Capabilities(logprobs=True, prefix_reuse=False, in_process=True, token_counts_exact=False)
        self.stats = BackendStats()
        self._tables: dict[int, list] = {}

    def choice_probs(self, prompts, candidates):
        self.stats.score_calls += 1
        self.stats.prompts_scored += len(prompts)
        k = len(candidates)
        out = []
        table = self._table(k)
        for p in prompts:
            n = len(p.messages[-1]["content"])
            probs, lp = table[n % 97]
            out.append(ChoiceResult(probs=list(probs), logprobs=list(lp), source="logprobs", prompt_tokens=n // 4))
        return out

    def _table(self, k: int) -> list[tuple[list[float], list[float]]]:
        """(probs, logprobs) for each text length mod 97: the logits depend on nothing else, so they
        are computed 97 times per candidate count instead of once per prompt (an instant backend
        should cost next to nothing; the values are the same as computing them per prompt)."""
        got = self._tables.get(k)
        if got is None:
            got = self._tables[k] = []
            for r in range(97):
                logits = [((r * (i + 7)) % 97) / 24.0 for i in range(k)]
                z = math.log(sum(math.exp(x) for x in logits))
                lp = [x - z for x in logits]
                got.append(([math.exp(x) for x in lp], lp))
        return got

    def generate(self, chats, params, seeds=None):
        self.stats.generate_calls += 1
        return [GenerationResult([Completion(text=f"{len(c)} messages", prompt_tokens=0, completion_tokens=2, finish_reason="stop")] * params.n) for c in chats]

    def close(self) -> None:
        pass
