"""Where aifeedback keeps its caches and runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache: ``$AIFEEDBACK_CACHE``, else ``$XDG_CACHE_HOME/aifeedback``, else ``~/.cache/aifeedback``."""
    env = os.environ.get("AIFEEDBACK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aifeedback"
