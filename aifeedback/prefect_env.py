"""Prefect settings that must be in the environment before ``import prefect``.

Used when a command runs as a Prefect flow (a configured API, a shared server, or
``--prefect``): Prefect's temporary local server takes 13-27 s to start here, its
default 20 s start-up timeout fails under load, and offline it logs telemetry
failures. Setting these imports nothing. Values already in the environment win.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "1",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def configure() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
