"""Prefect flows and the ``aifeedback`` CLI. Importing this package configures Prefect's environment."""

from aifeedback.prefect_env import configure as _configure

_configure()
