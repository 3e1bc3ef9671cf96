"""The label stage's batch job and its inputs (pairs files, or pairs built from a run's responses)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from aifeedback.batches import Excluded
from aifeedback.config import LabelConfig
from aifeedback.constitution import Constitution, load_constitution
from aifeedback.errors import InputError
from aifeedback.io import iter_rows, to_messages
from aifeedback.preference import Derivation
from aifeedback.records import LABEL_OUTPUTS, exclusion, stable_id
from aifeedback.stage import cached_backend
from aifeedback.store import RunStore

from .labeler import Labeler
from .templates import Template, load_template


def iter_pairs(cfg: LabelConfig) -> Iterator[dict | Excluded]:
    """Stream a pairs file: pairs {pair_id, prompt_id, messages, response_a, response_b}, bad rows as :class:`Excluded`."""
    seen: set[bytes] = set()  # 16-byte digests: a million ids cost about 100 MB less than the strings
    cols = (cfg.prompt_column, cfg.response_a_column, cfg.response_b_column)
    n, checked = 0, False
    for row in iter_rows(cfg.input):
        if cfg.limit is not None and n >= cfg.limit:
            break
        n += 1
        if isinstance(row, tuple):
            yield Excluded(exclusion(f"row-{n}", "labels", "invalid_row", row[1]))
            continue
        if not checked:  # the first readable row, even when bad rows come before it
            checked = True
            missing = [c for c in cols if c not in row]
            if missing:
                raise InputError(
                    f"no column(s) {missing} in {cfg.input}. Available columns: {sorted(row)}. "
                    "Set `prompt_column`, `response_a_column` and `response_b_column`."
                )
        rid = row.get(cfg.id_column) if cfg.id_column else None
        prompt = row.get(cfg.prompt_column)
        messages, reason = to_messages(prompt)
        pid = str(rid) if rid is not None else stable_id(prompt, row.get(cfg.response_a_column), row.get(cfg.response_b_column))
        if messages is None:
            yield Excluded(exclusion(pid, "labels", reason.split(":")[0], reason, str(prompt)[:2000]))
            continue
        digest = hashlib.blake2b(pid.encode(), digest_size=16).digest()
        if digest in seen:
            yield Excluded(exclusion(pid, "labels", "duplicate_id", f"pair id {pid} appears more than once; the first is kept"))
            continue
        seen.add(digest)
        yield {
            "pair_id": pid,
            "prompt_id": stable_id(messages),
            "messages": messages,
            "response_a": row.get(cfg.response_a_column),
            "response_b": row.get(cfg.response_b_column),
        }
    if n == 0:
        raise InputError(f"{cfg.input} holds no rows; pass a pairs file with columns {list(cols)}")


def load_pairs(cfg: LabelConfig) -> tuple[list[dict], list[dict]]:
    """The whole pairs file in memory -> (pairs, exclusions). Flows stream with :func:`iter_pairs` instead."""
    pairs, excluded = [], []
    for x in iter_pairs(cfg):
        (excluded.append(x.row) if isinstance(x, Excluded) else pairs.append(x))
    return pairs, excluded


def pairs_from_responses(store: RunStore, limit: int | None = None) -> list[dict]:
    """Every pair of responses to the same prompt (all pairs when there are more than two: listwise)."""
    table = store.read_table("responses")
    by_prompt: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs = []
    for pid, rs in by_prompt.items():
        rs.sort(key=lambda r: r["sample_index"])
        for x, y in itertools.combinations(rs, 2):
            pairs.append(
                {
                    "pair_id": stable_id(x["response_id"], y["response_id"]),
                    "prompt_id": pid,
                    "messages": [m for m in x["messages"] if m["role"] != "system"],
                    "response_a": x["response"],
                    "response_b": y["response"],
                }
            )
    return pairs[:limit] if limit else pairs


@dataclass
class LabelJob:
    cfg: LabelConfig
    stage: str = "labels"
    schema = LABEL_OUTPUTS
    template: Template = field(init=False)
    constitution: Constitution | None = field(init=False, default=None)
    constitution_version: str | None = field(init=False, default=None)

    def __post_init__(self):
        cfg = self.cfg
        self.template = load_template(cfg.template or cfg.method)
        if cfg.constitution:
            self.constitution, _ = load_constitution(cfg.constitution)
            self.constitution_version = self.constitution.full_version

    def item_id(self, item: dict) -> str:
        return item["pair_id"]

    # Settings that never change what the model produced: the inputs' layout, the batching, and
    # what aifeedback/preference.py derives on read (tie margin, temperature, clamp).
    NOT_KEYED = frozenset({"input", "limit", "batch_size", "backend", "prompt_column", "response_a_column", "response_b_column", "id_column", "tie_margin", "temperature", "cot_clamp"})

    def key_config(self) -> dict:
        """What changes the model's outputs for an item (its content is keyed separately, per item)."""
        return {
            **self.cfg.model_dump(mode="json", exclude=set(self.NOT_KEYED)),
            "backend": self.cfg.backend.identity(),
            "constitution_version": self.constitution_version,
        }

    def derivation(self) -> Derivation:
        """The settings readers apply to the stored outputs (written to the manifest)."""
        return Derivation.from_config(self.cfg)

    def manifest_info(self) -> dict:
        """The judge's prompt template and constitution, in full, for the manifest and the export card."""
        return {"labeler": "llm", "template": self.template.model_dump(), "constitution_id": self.constitution.id if self.constitution else None, "constitution_version": self.constitution_version}

    def model_id(self) -> str:
        return self.cfg.backend.model

    def template_version(self) -> str:
        return self.template.full_version

    def compute(self, items: list[dict], key: str) -> tuple[pa.Table, list[dict], dict]:
        """Label one batch: the stored columns as an Arrow table (with ``__item__``, the pair ids), exclusions, stats."""
        from aifeedback.config import config_hash

        backend = cached_backend(self.cfg.backend)
        labeler = Labeler(backend, self.cfg, self.template, self.constitution)
        cols, excluded = labeler.label_columns(items, self.cfg.backend.model, self.constitution_version)  # the store derives on read
        n = len(cols["pair_id"])
        cols["config_hash"] = [config_hash(self.key_config())] * n
        cols["batch_key"] = [key] * n
        cols["__item__"] = cols["pair_id"]
        table = pa.Table.from_pydict(cols, schema=_COMPUTED)
        return table, excluded, {"model_calls": labeler.calls, "retries": labeler.retries, "model_s": labeler.model_seconds}


# What LabelJob.compute returns: the stored columns but item_key and batch_id (the stage adds them), and the item ids.
_COMPUTED = pa.schema([f for f in LABEL_OUTPUTS if f.name not in ("item_key", "batch_id")] + [pa.field("__item__", pa.string())])
