"""Constitutions: versioned YAML files of critique/revision principle pairs and choice principles.

Format (unknown keys are errors)::

    id: harmless
    version: "1.0.0"
    description: ...
    critique_revision:            # for critique -> revise rounds
      - id: hr-01
        critique: "Identify ..."  # may use {prompt} and {response}
        revision: "Rewrite ..."   # may use {prompt}, {response} and {critique}
    choice:                       # RL-CAI style multiple-choice principles for labelling
      - id: hc-01
        question: "Which response is less harmful?"
    exemplars:                    # optional few-shot critique/revision examples
      - {prompt: ..., response: ..., critique: ..., revision: ...}
"""

from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config import StrictModel, format_validation_error
from .errors import ConfigError

CONSTITUTION_DIR = Path(__file__).resolve().parents[1] / "constitutions"
ALLOWED = {"critique": {"prompt", "response"}, "revision": {"prompt", "response", "critique"}, "question": set()}


def _placeholders(text: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad braces in {text[:60]!r}: {exc}; write literal braces as {{{{ and }}}}") from None


def _nonempty(v: str) -> str:
    if not v or not v.strip():
        raise ValueError("must be non-empty text")
    return v


class CritiqueRevision(StrictModel):
    id: str
    critique: str
    revision: str

    _ne = field_validator("id", "critique", "revision")(classmethod(lambda cls, v: _nonempty(v)))

    @model_validator(mode="after")
    def _check(self):
        for part in ("critique", "revision"):
            unknown = _placeholders(getattr(self, part)) - ALLOWED[part]
            if unknown:
                raise ValueError(f"{self.id}.{part} uses unknown placeholders {sorted(unknown)}; allowed: {sorted(ALLOWED[part])}")
        return self


class ChoicePrinciple(StrictModel):
    id: str
    question: str

    _ne = field_validator("id", "question")(classmethod(lambda cls, v: _nonempty(v)))

    @model_validator(mode="after")
    def _check(self):
        unknown = _placeholders(self.question)
        if unknown:
            raise ValueError(f"{self.id}.question uses placeholders {sorted(unknown)}; choice questions take none")
        return self


class RevisionExemplar(StrictModel):
    prompt: str
    response: str
    critique: str
    revision: str


class Constitution(StrictModel):
    id: str = Field(description="Constitution id, recorded on every row it shapes.")
    version: str = Field(description="Bump on any change: revision and labelling re-run, generation does not.")
    description: str
    critique_revision: list[CritiqueRevision] = Field(default_factory=list)
    choice: list[ChoicePrinciple] = Field(default_factory=list)
    exemplars: list[RevisionExemplar] = Field(default_factory=list)

    _ne = field_validator("id", "version", "description")(classmethod(lambda cls, v: _nonempty(v)))

    @model_validator(mode="after")
    def _check(self):
        if not self.critique_revision and not self.choice:
            raise ValueError("a constitution needs at least one critique_revision pair or one choice principle")
        ids = [p.id for p in self.critique_revision] + [p.id for p in self.choice]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"principle ids must be unique; repeated: {dupes}")
        return self

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @property
    def full_version(self) -> str:
        """Version plus content hash: recorded on rows and part of batch keys."""
        return f"{self.version}+{self.sha256[:12]}"

    def sample_pair(self, rng: random.Random) -> CritiqueRevision:
        if not self.critique_revision:
            raise ConfigError(f"constitution {self.id} has no critique_revision pairs; add some or use another file")
        return rng.choice(self.critique_revision)

    def sample_choices(self, rng: random.Random, k: int) -> list[ChoicePrinciple]:
        if not self.choice:
            raise ConfigError(f"constitution {self.id} has no choice principles; add a `choice:` list or label without `constitution`")
        k = min(k, len(self.choice))
        return rng.sample(self.choice, k)


def load_constitution(name_or_path: str | Path) -> tuple[Constitution, str]:
    """Load and validate a constitution -> (constitution, file text). Accepts a shipped id or a path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONSTITUTION_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in CONSTITUTION_DIR.glob("*.yaml"))
        raise ConfigError(f"no constitution at {str(name_or_path)!r}; shipped: {shipped}, or pass a YAML file path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the constitution as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with id, version, description, critique_revision and/or choice")
    try:
        return Constitution.model_validate(data), text
    except ValidationError as exc:
        raise ConfigError(format_validation_error(Constitution, exc, str(path))) from None
