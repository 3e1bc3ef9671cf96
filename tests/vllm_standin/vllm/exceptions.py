"""Stand-in for vllm/exceptions.py (vLLM 0.33.0): the validation error the engine raises."""

from typing import Any


class VLLMValidationError(ValueError):
    """vLLM-specific validation error for request validation failures."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value
