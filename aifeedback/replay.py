"""Which item batch mode is replaying on this thread (aifeedback/batch_api.py sets it; the openai backend reads it).

While set, ``OpenAIBackend._send`` answers from the batch results it holds instead of sending requests.
A module of its own so that the backend and the batch driver need not import each other.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("aifeedback_batch_item", default=None)


def current() -> Any:
    """The :class:`~aifeedback.batch_api.ItemReplay` being replayed on this thread, or None."""
    return _CURRENT.get()


@contextlib.contextmanager
def replaying(item: Any) -> Iterator[Any]:
    token = _CURRENT.set(item)
    try:
        yield item
    finally:
        _CURRENT.reset(token)
