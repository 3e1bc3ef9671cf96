"""Constitutional-AI critique -> revise rounds (Bai et al. 2022, supervised stage), as a batch job.

Each round samples one principle (seeded, recorded), asks for a critique of the
current response under it, then for a revision given the critique. The whole
chain is stored. Degenerate outputs are kept with a flag and a reason.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, field

from .backends.base import derive_seed, require_tokenizer
from .config import ReviseConfig, SamplingConfig, config_hash
from .constitution import Constitution, CritiqueRevision, load_constitution
from .records import REVISIONS, exclusion, stable_id
from .stage import cached_backend


def degenerate_reason(text: str, previous: str) -> str | None:
    """Why a revision is not a usable output, or None."""
    t = text.strip()
    if not t:
        return "empty"
    if t == previous.strip():
        return "identical_to_input"
    if len(t) >= 80 and len(zlib.compress(t.encode())) / len(t.encode()) < 0.2:
        return "repetitive"
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    if len(lines) >= 4 and len(set(lines)) <= len(lines) // 2:
        return "repeated_lines"
    return None


def _exemplar_turns(con: Constitution) -> list[dict]:
    turns = []
    for ex in con.exemplars:
        turns += [
            {"role": "user", "content": ex.prompt},
            {"role": "assistant", "content": ex.response},
            {"role": "user", "content": "Critique request: identify problems with your last response."},
            {"role": "assistant", "content": ex.critique},
            {"role": "user", "content": "Revision request: rewrite your response to fix them."},
            {"role": "assistant", "content": ex.revision},
        ]
    return turns


def critique_chat(con: Constitution, principle: CritiqueRevision, messages: list[dict], response: str, few_shot: bool) -> list[dict]:
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return (
        (_exemplar_turns(con) if few_shot else [])
        + messages
        + [
            {"role": "assistant", "content": response},
            {"role": "user", "content": "Critique request: " + principle.critique.format(prompt=prompt, response=response)},
        ]
    )


def revision_chat(con: Constitution, principle: CritiqueRevision, messages: list[dict], response: str, critique: str, few_shot: bool) -> list[dict]:
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return critique_chat(con, principle, messages, response, few_shot) + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": "Revision request: " + principle.revision.format(prompt=prompt, response=response, critique=critique) + " Reply with the rewritten response only."},
    ]


@dataclass
class ReviseJob:
    cfg: ReviseConfig
    stage: str = "revisions"
    schema = REVISIONS
    constitution: Constitution = field(init=False)
    constitution_version: str = field(init=False)

    def __post_init__(self):
        self.constitution, _ = load_constitution(self.cfg.constitution)
        self.constitution_version = self.constitution.full_version
        self._filter = re.compile(self.cfg.filter_regex, re.IGNORECASE) if self.cfg.filter_regex else None

    def item_id(self, item: dict) -> str:
        return item["response_id"]

    def key_config(self) -> dict:
        c = self.cfg
        return {
            "constitution": self.constitution.id,
            "constitution_version": self.constitution_version,
            "rounds": c.rounds,
            "few_shot": c.few_shot,
            "filter_regex": c.filter_regex,
            "overlong": c.overlong,
            "seed": c.seed,
            "sampling": c.sampling.model_dump(),
            "backend": c.backend.identity(),
        }

    def model_id(self) -> str:
        return self.cfg.backend.model

    def template_version(self) -> str:
        return "revise-chat-v1"

    def flagged(self, item: dict) -> bool:
        if self._filter is None:
            return True
        text = " ".join(m["content"] for m in item["messages"]) + " " + item["response"]
        return bool(self._filter.search(text))

    def compute(self, items: list[dict], key: str) -> tuple[list[dict], list[dict], dict]:
        cfg, con = self.cfg, self.constitution
        backend = cached_backend(cfg.backend)
        c0 = backend.stats.generate_calls
        chash = config_hash(self.key_config())
        excluded, work = [], []
        require_tokenizer(backend, cfg.overlong)
        for it in items:
            msgs = [m for m in it["messages"] if m["role"] != "system"]
            if cfg.overlong == "exclude":
                n_tok = backend.tokenizer.count_chat(msgs + [{"role": "assistant", "content": it["response"]}])
                limit = (backend.capabilities.max_context or 10**9) // 2
                if n_tok > limit:
                    excluded.append(exclusion(it["response_id"], self.stage, "prompt_too_long", f"{n_tok} tokens leave no room for critique and revision (limit {limit}); set overlong: truncate"))
                    continue
            seed = derive_seed(cfg.seed, it["response_id"], "revise")
            work.append({"item": it, "msgs": msgs, "current": it["response"], "rounds": [], "rng": random.Random(seed), "seed": seed, "truncated": False, "error": None, "revise": self.flagged(it)})
        active = [w for w in work if w["revise"]]
        params = SamplingConfig(**{**cfg.sampling.model_dump(), "n": 1})
        for rnd in range(cfg.rounds):
            live = [w for w in active if w["error"] is None]
            if not live:
                break
            principles = [con.sample_pair(w["rng"]) for w in live]
            seeds = [[derive_seed(w["seed"], rnd, "critique")] for w in live]
            crit = backend.generate([critique_chat(con, p, w["msgs"], w["current"], cfg.few_shot) for w, p in zip(live, principles)], params, seeds)
            for w, r in zip(live, crit):
                if r.error:
                    w["error"] = r.error
            ok = [(w, p, c) for w, p, c in zip(live, principles, crit) if not c.error]
            seeds = [[derive_seed(w["seed"], rnd, "revise")] for w, _, _ in ok]
            rev = backend.generate([revision_chat(con, p, w["msgs"], w["current"], c.completions[0].text, cfg.few_shot) for w, p, c in ok], params, seeds)
            for (w, p, c), r in zip(ok, rev):
                if r.error:
                    w["error"] = r.error
                    continue
                text = r.completions[0].text
                w["truncated"] |= c.completions[0].prompt_truncated or r.completions[0].prompt_truncated
                w["rounds"].append({"round": rnd + 1, "principle_id": p.id, "critique": c.completions[0].text, "revision": text, "seed": derive_seed(w["seed"], rnd, "revise")})
                if text.strip():  # an empty revision is recorded but the next round works on the last good text
                    w["current"] = text
        rows = []
        for w in work:
            it = w["item"]
            if w["error"] is not None:
                excluded.append(exclusion(it["response_id"], self.stage, "backend_error", w["error"]))
                continue
            final = w["rounds"][-1]["revision"] if w["rounds"] else it["response"]
            reason = degenerate_reason(final, it["response"]) if w["revise"] else None
            if w["revise"] and reason is None:
                reason = next((f"round {r['round']}: {degenerate_reason(r['revision'], '')}" for r in w["rounds"] if degenerate_reason(r["revision"], "") in ("empty", "repetitive", "repeated_lines")), None)
            rows.append(
                {
                    "__item__": it["response_id"],
                    "revision_id": stable_id(it["response_id"], chash),
                    "response_id": it["response_id"],
                    "prompt_id": it["prompt_id"],
                    "messages": w["msgs"],
                    "initial_response": it["response"],
                    "final_revision": final,
                    "rounds": w["rounds"],
                    "revised": w["revise"],
                    "degenerate": reason is not None,
                    "degenerate_reason": reason,
                    "constitution_id": con.id,
                    "constitution_version": self.constitution_version,
                    "few_shot": cfg.few_shot,
                    "seed": w["seed"],
                    "model": cfg.backend.model,
                    "backend": cfg.backend.kind,
                    "prompt_truncated": w["truncated"],
                    "config_hash": chash,
                    "batch_key": key,
                }
            )
        return rows, excluded, {"model_calls": backend.stats.generate_calls - c0}


def _provenance(r: dict) -> dict:
    return {
        "prompt_id": r["prompt_id"],
        "revision_id": r["revision_id"],
        "constitution_id": r["constitution_id"],
        "constitution_version": r["constitution_version"],
        "principle_ids": [x["principle_id"] for x in r["rounds"]],
        "model": r["model"],
        "seed": r["seed"],
    }


def sft_rows(revisions: list[dict]) -> list[dict]:
    """prompt -> final revision, for revised, non-degenerate rows (TRL conversational 'messages')."""
    return [
        {"messages": r["messages"] + [{"role": "assistant", "content": r["final_revision"]}], **_provenance(r)}
        for r in revisions
        if r["revised"] and not r["degenerate"]
    ]


def revision_pairs(revisions: list[dict]) -> list[dict]:
    """Preference pairs in TRL columns: final revision (chosen) over the initial response (rejected)."""
    return [
        {
            "prompt": r["messages"],
            "chosen": [{"role": "assistant", "content": r["final_revision"]}],
            "rejected": [{"role": "assistant", "content": r["initial_response"]}],
            **_provenance(r),
        }
        for r in revisions
        if r["revised"] and not r["degenerate"]
    ]
