"""The AI preference labeler: position-debiased pairwise labels, pointwise ratings, calibration, CoT, principles.

A batch of pairs becomes one list of scoring prompts, ordered so that prompts
sharing text sit together: for each pair, for each principle, both orders. The
backend then computes the preamble once per batch and each pair's context once
(transformers: KV reuse; vllm/openai: the server's prefix cache).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from aifeedback.backends import Backend
from aifeedback.backends.base import derive_seed, require_tokenizer
from aifeedback.config import LabelConfig, SamplingConfig
from aifeedback.constitution import Constitution
from aifeedback.errors import ConfigError
from aifeedback.preference import Derivation, derive
from aifeedback.records import exclusion, pair_problem

from .injection import pair_flags
from .scores import calibrate, expected_score, normalised_reward
from .templates import Template

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, "Calibrate before use"


def format_context(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages if m["role"] != "system")


@dataclass
class Prepared:
    pair: dict
    fields: dict  # context, a, b after truncation
    truncated: bool
    principles: list[tuple[str | None, str | None]]  # (principle id, question)
    orders: list[str]  # "AB" (A shown first) and/or "BA"


class Labeler:
    def __init__(self, backend: Backend, cfg: LabelConfig, template: Template, constitution: Constitution | None = None):
        self.backend, self.cfg, self.template, self.constitution = backend, cfg, template, constitution
        if cfg.method == "pairwise" and template.kind != "pairwise":
            raise ConfigError(f"method pairwise needs a pairwise template, got {template.id} ({template.kind}); set `template` to pairwise or a pairwise template file")
        if cfg.method == "pointwise" and template.kind != "pointwise":
            raise ConfigError(f"method pointwise needs a pointwise template, got {template.id} ({template.kind}); set `template` to pointwise or a pointwise template file")
        self.model_seconds = 0.0  # time spent inside backend calls
        self.calls = 0  # backend calls made by this labeler (not the backend's shared counters: threads share a backend)
        self.retries = 0  # retries reported by those calls' results
        self._template_version = template.full_version  # a hash: computed once, not per row
        self._mode = self.mode_name()
        self._derivation = Derivation.from_config(cfg)
        self._seeded = constitution is not None or (cfg.method == "pairwise" and cfg.orders == "single")
        require_tokenizer(backend, cfg.overlong)
        self._tok = backend.tokenizer if backend.capabilities.tokenizer else None

    # input ----------------------------------------------------------------------
    def _truncate(self, text: str, limit: int, keep: str) -> tuple[str, bool]:
        if self._tok is not None:
            ids = self._tok.encode(text)
            if len(ids) <= limit:
                return text, False
            kept = ids[:limit] if keep == "head" else ids[-limit:]
            body = self._tok.decode(kept)
            return (body + " [...]") if keep == "head" else ("[...] " + body), True
        chars = limit * 4  # no tokenizer (remote endpoint): about 4 characters a token
        if len(text) <= chars:
            return text, False
        return (text[:chars] + " [...]") if keep == "head" else ("[...] " + text[-chars:]), True

    def prepare(self, pair: dict) -> tuple[Prepared | None, dict | None]:
        cfg, pid = self.cfg, pair["pair_id"]
        problem = pair_problem(pair)
        if problem is not None:
            return None, exclusion(pid, "labels", *problem)
        a, b = pair["response_a"], pair["response_b"]
        context, t0 = self._truncate(format_context(pair["messages"]), cfg.max_context_tokens, "tail")
        a2, t1 = self._truncate(a, cfg.max_response_tokens, "head")
        b2, t2 = self._truncate(b, cfg.max_response_tokens, "head")
        truncated = t0 or t1 or t2
        if truncated and cfg.overlong == "exclude":
            return None, exclusion(pid, "labels", "too_long", f"context over {cfg.max_context_tokens} or a response over {cfg.max_response_tokens} tokens; set overlong: truncate to keep it")
        rng = random.Random(derive_seed(cfg.seed, pid)) if self._seeded else None
        if self.constitution is not None and cfg.method == "pairwise":
            k = 1 if cfg.principles == "sample" else cfg.k_principles
            principles = [(p.id, p.question) for p in self.constitution.sample_choices(rng, k)]
        else:
            principles = [(None, None)]
        if cfg.method == "pointwise":
            orders = ["A", "B"]
        elif cfg.orders == "both":
            orders = ["AB", "BA"]
        else:
            orders = [rng.choice(["AB", "BA"])]
        return Prepared(pair, {"context": context, "a": a2, "b": b2}, truncated, principles, orders), None

    # prompts --------------------------------------------------------------------
    def _sample_fields(self, f: dict, order: str) -> dict:
        if order == "AB":
            return {"context": f["context"], "response_1": f["a"], "response_2": f["b"]}
        if order == "BA":
            return {"context": f["context"], "response_1": f["b"], "response_2": f["a"]}
        return {"context": f["context"], "response": f["a"] if order == "A" else f["b"]}

    def _content_free_prior(self, question: str | None) -> list[float] | None:
        """P(option) on content-free samples; both responses are the same placeholder, so one prior serves both orders."""
        cands = self.template.candidates
        fields = [
            {"context": cf, "response_1": cf, "response_2": cf} if self.template.kind == "pairwise" else {"context": cf, "response": cf}
            for cf in CONTENT_FREE
        ]
        prompts = [self.template.prompt(f, question, self.cfg.few_shot) for f in fields]
        got = self.backend.choice_probs(prompts, cands)
        self.calls += 1
        self.retries += sum(r.retries for r in got)
        res = [r.probs for r in got if r.probs is not None]
        if not res:
            return None
        return [sum(r[k] for r in res) / len(res) for k in range(len(cands))]

    # labelling ------------------------------------------------------------------
    # The stored columns, in LABEL_OUTPUTS order (item_key is added by the stage).
    COLUMNS = (
        "pair_id", "prompt_id", "messages", "response_a", "response_b", "mode", "option_probs", "candidates", "orders",
        "principle_ids", "rationale", "prob_source", "retries", "injection_flags", "truncated", "raw", "labeler_model",
        "backend", "template", "template_version", "constitution_id", "constitution_version", "seed",
    )

    def label(self, pairs: list[dict], key: str, labeler_id: str, constitution_version: str | None, derived: bool = True) -> tuple[list[dict], list[dict]]:
        """Label rows and exclusions. With ``derived`` (direct callers) each row also has p_a, the hard label and
        the rest, under this labeler's settings; the run store keeps only the model outputs and derives on read."""
        cols, excluded = self.label_columns(pairs, labeler_id, constitution_version)
        names = list(cols)
        rows = [dict(zip(names, vals)) for vals in zip(*cols.values())]
        if derived:
            rows = [{**row, **derive(row, self._derivation)} for row in rows]
        return rows, excluded

    def label_columns(self, pairs: list[dict], labeler_id: str, constitution_version: str | None) -> tuple[dict[str, list], list[dict]]:
        """The stored label rows as columns (one list per column of :attr:`COLUMNS`), and the exclusions.

        Built column by column: a batch of pairs becomes one list of scoring prompts and one
        backend call; no per-row dict is made (the run store writes the columns as they are).
        A row stores option probabilities per order and principle, and provenance; p(A>B), the
        hard label, confidence and consistency are derived from ``option_probs`` when the labels
        are read (aifeedback/preference.py), so tie_margin, temperature and cot_clamp never cost
        a model call.
        """
        cfg, tpl = self.cfg, self.template
        prepared, excluded = [], []
        for pair in pairs:
            p, ex = self.prepare(pair)
            if ex is not None:
                excluded.append(ex)
            else:
                prepared.append(p)
        slots = [(i, pi, order) for i, p in enumerate(prepared) for pi in range(len(p.principles)) for order in p.orders]
        rationales: dict[tuple, str] = {}
        if cfg.cot and slots:
            chats = [tpl.cot_chat(self._sample_fields(prepared[i].fields, o), prepared[i].principles[pi][1], cfg.few_shot) for i, pi, o in slots]
            t = time.perf_counter()
            gen = self.backend.generate(chats, SamplingConfig(temperature=0.0, max_new_tokens=cfg.cot_max_new_tokens), seeds=[[0]] * len(chats))
            self.model_seconds += time.perf_counter() - t
            self.calls += 1
            self.retries += sum(g.retries for g in gen)
            for slot, g in zip(slots, gen):
                rationales[slot] = g.completions[0].text if g.error is None else None
        if cfg.cot:
            prompts = [tpl.prompt(self._sample_fields(prepared[i].fields, o), prepared[i].principles[pi][1], cfg.few_shot, rationales.get((i, pi, o))) for i, pi, o in slots]
        else:
            prompts = tpl.prompts([prepared[i].fields for i, _, _ in slots], [o for _, _, o in slots], [prepared[i].principles[pi][1] for i, pi, _ in slots], cfg.few_shot)
        for prompt, (i, pi, o) in zip(prompts, slots):  # batch mode's custom_id: ITEMKEY:ORDER (and principle)
            prompt.tag = o if len(prepared[i].principles) == 1 else f"{prepared[i].principles[pi][0]}.{o}"
        t = time.perf_counter()
        results = self.backend.choice_probs(prompts, tpl.candidates) if prompts else []
        self.calls += 1 if prompts else 0
        self.retries += sum(r.retries for r in results)
        priors: dict[str | None, list[float] | None] = {}
        if cfg.calibrate:
            for q in {prepared[i].principles[pi][1] for i, pi, _ in slots}:
                priors[q] = self._content_free_prior(q)
        self.model_seconds += time.perf_counter() - t
        cols: dict[str, list] = {c: [] for c in self.COLUMNS}
        (c_pair, c_prompt, c_msgs, c_a, c_b, c_probs, c_orders, c_pids, c_rat, c_src, c_retries, c_flags, c_trunc, c_raw) = (
            cols[c] for c in ("pair_id", "prompt_id", "messages", "response_a", "response_b", "option_probs", "orders", "principle_ids", "rationale", "prob_source", "retries", "injection_flags", "truncated", "raw")
        )
        pairwise, calibrated, cot = cfg.method == "pairwise", cfg.calibrate, cfg.cot
        pos = 0  # slots are grouped by pair, in pair order
        for i, p in enumerate(prepared):
            n = len(p.principles) * len(p.orders)
            entries = list(zip(slots[pos : pos + n], results[pos : pos + n]))
            pos += n
            bad = [r for _, r in entries if r.probs is None]
            if bad or (cot and any(rationales.get(s) is None for s, _ in entries)):
                err = bad[0] if bad else None
                detail = (err.error if err else "rationale generation failed") or "no probabilities"
                reason = "unparseable" if err is not None and err.source == "unparseable" else "backend_error"
                excluded.append(exclusion(p.pair["pair_id"], "labels", reason, f"{detail} (retries: {sum(r.retries for _, r in entries)})", err.raw if err else None))
                continue
            option_probs, raw_texts, parsed, retries = [], [], False, 0
            for (_, pi, o), r in entries:
                probs = r.probs
                if calibrated:
                    prior = priors.get(p.principles[pi][1] if pairwise else None)
                    if prior:
                        probs = calibrate(probs, prior)
                option_probs.append({"order": o, "principle_id": p.principles[pi][0], "probs": list(probs)})
                if r.raw and pairwise:
                    raw_texts.append(f"{o}:{r.raw}")
                parsed = parsed or r.source == "parsed"
                retries += r.retries
            pair = p.pair
            c_pair.append(pair["pair_id"])
            c_prompt.append(pair.get("prompt_id"))
            c_msgs.append(pair["messages"])
            c_a.append(pair["response_a"])
            c_b.append(pair["response_b"])
            c_probs.append(option_probs)
            c_orders.append(p.orders)
            c_pids.append([pid for pid, _ in p.principles if pid is not None])
            c_rat.append(
                "\n---\n".join(f"[{o}{'' if p.principles[pi][0] is None else ' ' + p.principles[pi][0]}] {rationales[(i, pi, o)]}" for (i, pi, o), _ in entries) if cot else None
            )
            c_src.append("parsed" if parsed else "logprobs")
            c_retries.append(retries)
            c_flags.append(pair_flags(pair["response_a"], pair["response_b"]))
            c_trunc.append(p.truncated)
            c_raw.append("; ".join(raw_texts)[:2000] if raw_texts else None)
        n = len(c_pair)
        constants = {
            "mode": self._mode,
            "candidates": list(tpl.candidates),
            "labeler_model": labeler_id,
            "backend": self.cfg.backend.kind,
            "template": tpl.id,
            "template_version": self._template_version,
            "constitution_id": self.constitution.id if self.constitution else None,
            "constitution_version": constitution_version,
            "seed": cfg.seed,
        }
        for name, value in constants.items():
            cols[name] = [value] * n
        return cols, excluded

    def mode_name(self) -> str:
        c = self.cfg
        parts = [c.method]
        if c.method == "pairwise":
            parts.append("both" if c.orders == "both" else "single")
        if c.calibrate:
            parts.append("calibrated")
        if c.cot:
            parts.append("cot")
        if c.few_shot:
            parts.append("fewshot")
        if self.constitution is not None and c.method == "pairwise":
            parts.append(f"{c.principles}{c.k_principles if c.principles == 'ensemble' else ''}")
        return "-".join(parts)


def pointwise_rewards(backend: Backend, template: Template, items: list[tuple[list[dict], str]], few_shot: bool = False) -> list[float | None]:
    """d-RLAIF rewards in [-1, 1] for (context messages, response) items: sum_i i*P(i), normalised."""
    prompts = [template.prompt({"context": format_context(m), "response": r}, None, few_shot) for m, r in items]
    cands = template.candidates
    lo, hi = float(cands[0]), float(cands[-1])
    out = []
    for res in backend.choice_probs(prompts, cands):
        out.append(None if res.probs is None else normalised_reward(expected_score(res.probs, cands), lo, hi))
    return out
