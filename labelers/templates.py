"""Labeler prompt templates: four parts kept as files (preamble, exemplars, sample, ending).

Texts from the data are placed inside tags; any tag of ours that appears inside
a text is neutralised first, so a response cannot close its own block and pass
for the template. ``neutralise_tags: false`` turns that off; it exists only so
that ``bench/prompt_injection.py`` can measure what the guard buys.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from aifeedback.backends.base import ScoringPrompt
from aifeedback.config import StrictModel, format_validation_error
from aifeedback.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "templates"
TAGS = ("conversation", "response_1", "response_2", "response", "rationale")
_TAG_RE = re.compile(r"<\s*/?\s*(" + "|".join(TAGS) + r")\s*>", re.IGNORECASE)
PLACEHOLDERS = {
    "pairwise": {"exemplar": {"context", "response_1", "response_2", "question", "answer"}, "sample": {"context", "response_1", "response_2"}},
    "pointwise": {"exemplar": {"context", "response", "question", "answer"}, "sample": {"context", "response"}},
}


def neutralise(text: str) -> str:
    """Defuse our delimiter tags inside data: ``</response_1>`` -> ``[/response_1]``."""
    if "<" not in text:  # no tag possible: skip the regex (the common case, at millions of texts)
        return text
    return _TAG_RE.sub(lambda m: "[" + m.group(0).strip("<>").strip() + "]", text)


class Exemplar(StrictModel):
    context: str
    response_1: str | None = None
    response_2: str | None = None
    response: str | None = None
    answer: str


class Template(StrictModel):
    id: str = Field(description="Template id, recorded on every label row.")
    version: str = Field(description="Bump when the wording changes; part of every batch key.")
    kind: Literal["pairwise", "pointwise"]
    preamble: str
    exemplar: str
    sample: str
    ending: str
    question: str = Field(description="Default question; a constitution's choice principle replaces it.")
    answer_prefix: str
    candidates: list[str]
    cot_request: str
    exemplars: list[Exemplar] = Field(default_factory=list)
    neutralise_tags: bool = Field(True, description="Defuse our delimiter tags inside data texts; false only to measure the guard (bench/prompt_injection.py).")

    @model_validator(mode="after")
    def _check(self) -> "Template":
        allowed = PLACEHOLDERS[self.kind]
        for part in ("exemplar", "sample"):
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, part)) if f}
            unknown = used - allowed[part]
            if unknown:
                raise ValueError(f"{part} uses unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed[part])}")
        for part in ("ending", "cot_request"):
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, part)) if f}
            if used - {"question"}:
                raise ValueError(f"{part} may only use {{question}}, got {sorted(used)}")
        if len(set(self.candidates)) != len(self.candidates) or len(self.candidates) < 2:
            raise ValueError(f"candidates must be 2 or more distinct strings, got {self.candidates}")
        for ex in self.exemplars:
            if ex.answer not in self.candidates:
                raise ValueError(f"exemplar answer {ex.answer!r} is not one of the candidates {self.candidates}")
        return self

    @property
    def fingerprint(self) -> str:
        # the default (guarded) leaves the field out, so templates from before it existed keep their fingerprint
        exclude = {"neutralise_tags"} if self.neutralise_tags else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:12]

    @property
    def full_version(self) -> str:
        return f"{self.id}@{self.version}+{self.fingerprint}"

    # rendering ----------------------------------------------------------------
    def _data(self, text: str) -> str:
        return neutralise(text) if self.neutralise_tags else text

    def _few_shot(self, question: str) -> str:
        parts = []
        for ex in self.exemplars:
            fields = {k: self._data(v) for k, v in ex.model_dump().items() if v is not None}
            parts.append(self.exemplar.format(question=question, **fields).strip())
        return ("Here are examples of good ratings.\n\n" + "\n\n".join(parts) + "\n\nNow the material to rate.\n\n") if parts else ""

    def _system_and_user(self, question: str, few_shot: bool, sample_fields: dict) -> tuple[str, str]:
        sample = self.sample.format(**{k: self._data(v) for k, v in sample_fields.items()}).strip()
        user = (self._few_shot(question) if few_shot else "") + sample
        return self.preamble.strip(), user

    def prompt(self, sample_fields: dict, question: str | None = None, few_shot: bool = False, rationale: str | None = None) -> ScoringPrompt:
        """The scoring prompt: preamble (system), few-shot + sample + ending (user), then the answer prefix."""
        q = question or self.question
        system, user = self._system_and_user(q, few_shot, sample_fields)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user + "\n" + self.ending.format(question=q).strip()}]
        prefix = self.answer_prefix
        if rationale is not None:
            # chain of thought: the rationale is the assistant's own text, then the answer prefix
            prefix = rationale.strip() + "\n" + self.answer_prefix
        return ScoringPrompt(messages, prefix)

    def prompts(self, fields: list[dict], orders: list[str], questions: list[str | None], few_shot: bool = False) -> list[ScoringPrompt]:
        """Many scoring prompts at once, each the text :meth:`prompt` renders (no rationale).

        ``fields[k]`` holds a pair's ``context``, ``a`` and ``b``; ``orders[k]`` is "AB", "BA"
        (pairwise) or "A", "B" (pointwise: the response rated). Shared parts are rendered once:
        the preamble, the few-shot block and the ending once per question, each pair's texts
        neutralised once for all its orders (consecutive entries that share a ``fields`` dict).
        """
        fmt, stripped = self._sample_format()
        parts: dict[str | None, tuple[dict, str, str]] = {}
        data = self._data
        last, ctx, a, b = None, "", "", ""
        out = []
        pairwise = self.kind == "pairwise"
        for f, order, question in zip(fields, orders, questions):
            if f is not last:
                last, ctx, a, b = f, data(f["context"]), data(f["a"]), data(f["b"])
            got = parts.get(question)
            if got is None:
                q = question or self.question
                got = parts[question] = ({"role": "system", "content": self.preamble.strip()}, self._few_shot(q) if few_shot else "", "\n" + self.ending.format(question=q).strip())
            system, head, tail = got
            if pairwise:
                sample = fmt.format(context=ctx, response_1=a, response_2=b) if order == "AB" else fmt.format(context=ctx, response_1=b, response_2=a)
            else:
                sample = fmt.format(context=ctx, response=a if order == "A" else b)
            if not stripped:
                sample = sample.strip()
            out.append(ScoringPrompt([dict(system), {"role": "user", "content": head + sample + tail}], self.answer_prefix))
        return out

    def _sample_format(self) -> tuple[str, bool]:
        """The sample's format string, stripped in advance when that equals stripping each rendering.

        ``sample.format(...).strip()`` only touches the template's own text when its first and last
        parts are literal text holding more than whitespace; then the stripped template renders the
        same string. Otherwise (a placeholder at either end) each rendering is stripped.
        """
        pieces = list(string.Formatter().parse(self.sample))
        first_literal = pieces[0][0] if pieces else ""
        last = pieces[-1] if pieces else ("", None, None, None)
        ends_literal = last[1] is None and last[0].strip() != ""
        if first_literal.strip() and ends_literal:
            return self.sample.strip(), True
        return self.sample, False

    def cot_chat(self, sample_fields: dict, question: str | None = None, few_shot: bool = False) -> list[dict]:
        q = question or self.question
        system, user = self._system_and_user(q, few_shot, sample_fields)
        return [{"role": "system", "content": system}, {"role": "user", "content": user + "\n" + self.cot_request.format(question=q).strip()}]


def load_template(name_or_path: str) -> Template:
    """A shipped template by id (``pairwise``, ``pointwise``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
        raise ConfigError(f"no labeler template {name_or_path!r}; shipped templates: {shipped}, or pass a YAML file path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Template.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(Template, exc, str(path))) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
