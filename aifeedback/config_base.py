"""What every config model shares: ``extra="forbid"``, and each field marked as changing outputs or not."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def Setting(default: Any = PydanticUndefined, *, affects_output: bool, **kwargs: Any) -> Any:
    """A backend ``Field`` that says whether it can change a model output.

    ``identity()`` is derived from this marker, so every backend setting must be
    classified: one that can change an output goes into batch keys and provenance,
    a performance or operational knob does not.
    """
    return Field(default, json_schema_extra={"affects_output": affects_output}, **kwargs)


def affects_output(field: FieldInfo) -> bool | None:
    """The ``affects_output`` marker of a backend field; None when the field is not classified."""
    extra = field.json_schema_extra
    return extra.get("affects_output") if isinstance(extra, dict) else None
