"""Errors that tell the user how to fix them."""


class AIFeedbackError(Exception):
    """Base class; every message says what was expected and what to do."""


class ConfigError(AIFeedbackError, ValueError):
    """A config file or flag is invalid."""


class ModelNotFound(AIFeedbackError):
    """A model id or path could not be resolved offline."""


class BackendError(AIFeedbackError):
    """A backend failed after its retries; the message keeps the last error text."""


class InputError(AIFeedbackError, ValueError):
    """An input file cannot be read as the stage expects."""


class StoreError(AIFeedbackError):
    """The run store cannot be read or written (a missing stage or shard, a full or read-only disk)."""
