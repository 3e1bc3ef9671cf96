"""The generation stage's batch job: n seeded responses per prompt (no Prefect here)."""

from __future__ import annotations

from dataclasses import dataclass

from .backends.base import derive_seed, require_tokenizer
from .config import GenerateConfig, config_hash
from .io import iter_rows, to_messages
from .records import RESPONSES, exclusion, stable_id
from .stage import cached_backend


def load_prompts(path: str, prompt_column: str, id_column: str | None = None, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Read a prompt set -> (items, exclusions). Items are {prompt_id, messages}."""
    from .errors import InputError

    items, excluded, seen = [], [], set()
    n, checked = 0, False
    for row in iter_rows(path):
        if limit is not None and n >= limit:
            break
        n += 1
        if isinstance(row, tuple):
            excluded.append(exclusion(f"row-{n}", "prompts", "invalid_row", row[1]))
            continue
        if not checked and prompt_column not in row:  # the first readable row, even after bad ones
            raise InputError(f"no column {prompt_column!r} in {path}. Available columns: {sorted(row)}. Set `prompt_column`.")
        checked = True
        messages, reason = to_messages(row.get(prompt_column))
        if messages is None:
            excluded.append(exclusion(str(row.get(id_column) if id_column else f"row-{n}"), "prompts", reason.split(":")[0], reason, str(row.get(prompt_column))[:2000]))
            continue
        pid = str(row[id_column]) if id_column and row.get(id_column) is not None else stable_id(messages)
        if pid in seen:
            excluded.append(exclusion(pid, "prompts", "duplicate_id", f"prompt id {pid} appears more than once; the first is kept"))
            continue
        seen.add(pid)
        items.append({"prompt_id": pid, "messages": messages})
    if n == 0:
        raise InputError(f"{path} holds no rows; pass a prompt file with a {prompt_column!r} column")
    return items, excluded


@dataclass
class GenerateJob:
    cfg: GenerateConfig
    stage: str = "responses"
    schema = RESPONSES

    def item_id(self, item: dict) -> str:
        return item["prompt_id"]

    def key_config(self) -> dict:
        c = self.cfg
        return {
            "sampling": c.sampling.model_dump(),
            "system_prompt": c.system_prompt,
            "overlong": c.overlong,
            "backend": c.backend.identity(),
            "max_context": c.backend.max_context,
        }

    def model_id(self) -> str:
        return self.cfg.backend.model

    def template_version(self) -> str:
        return ""

    def compute(self, items: list[dict], key: str) -> tuple[list[dict], list[dict], dict]:
        cfg = self.cfg
        backend = cached_backend(cfg.backend)
        calls0 = backend.stats.generate_calls
        chash = config_hash(self.key_config())
        chats, keep, excluded = [], [], []
        require_tokenizer(backend, cfg.overlong)
        for it in items:
            chat = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + it["messages"]
            if cfg.overlong == "exclude":
                n_tok = backend.tokenizer.count_chat(chat)
                limit = (backend.capabilities.max_context or 10**9) - cfg.sampling.max_new_tokens
                if n_tok > limit:
                    excluded.append(exclusion(it["prompt_id"], self.stage, "prompt_too_long", f"{n_tok} prompt tokens > {limit} (context minus max_new_tokens); set overlong: truncate to keep it"))
                    continue
            chats.append(chat)
            keep.append(it)
        seeds = [[derive_seed(cfg.sampling.seed, it["prompt_id"], j) for j in range(cfg.sampling.n)] for it in keep]
        results = backend.generate(chats, cfg.sampling, seeds) if chats else []
        rows = []
        for it, chat, res, item_seeds in zip(keep, chats, results, seeds):
            if res.error is not None:
                excluded.append(exclusion(it["prompt_id"], self.stage, "backend_error", f"{res.error} (retries: {res.retries})"))
                continue
            for j, c in enumerate(res.completions):
                rows.append(
                    {
                        "__item__": it["prompt_id"],
                        "response_id": stable_id(it["prompt_id"], j, chash),
                        "prompt_id": it["prompt_id"],
                        "messages": chat,
                        "response": c.text,
                        "sample_index": j,
                        "seed": item_seeds[j],
                        "model": cfg.backend.model,
                        "backend": cfg.backend.kind,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "finish_reason": c.finish_reason,
                        "prompt_truncated": c.prompt_truncated,
                        "config_hash": chash,
                        "batch_key": key,
                    }
                )
        return rows, excluded, {"model_calls": backend.stats.generate_calls - calls0, "retries": sum(r.retries for r in results)}
