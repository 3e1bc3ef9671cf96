"""Secrets out of everything written: run-store configs and manifests, Prefect flow-run parameters, export cards.

A config is written where others read it (a run folder, Prefect's database, a data set card on
the Hub), and a backend of your own takes free-form ``backend.options``, which may hold a key.
:func:`redact` replaces, anywhere in a JSON-like value:

- the value of a key whose *name* says it holds a secret (:func:`is_secret_name`: ``api_key``,
  ``auth_token``, ``client_secret``, ``password``... but not ``api_key_env``, which names a
  variable, nor ``max_new_tokens``);
- text that looks like a token wherever it appears: Hugging Face (``hf_...``), OpenAI-style
  (``sk-...``), GitHub (``ghp_...``), ``Bearer ...``;
- the value of every environment variable whose name says it holds a secret (``HF_TOKEN``,
  ``OPENAI_API_KEY``, ``MY_ENDPOINT_API_KEY``, ``AWS_SECRET_ACCESS_KEY``...), wherever it appears.

Each becomes ``REDACTED``. Keys are never needed in what is written: backends read them from
the environment (``backend.api_key_env``).
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***redacted***"

# a name holds a secret when any of its words is one of these...
_SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials", "apikey"})
# ...or when its last word is one of these (``api_key``, ``hf_token``, ``basic_auth``; not ``key_config``, ``api_key_env``)
_SECRET_LAST = frozenset({"key", "token", "auth", "authorization", "bearer"})
_HASHES = frozenset({"item_key", "batch_key"})  # this project's content hashes (aifeedback/records.py), not secrets
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")  # snake, kebab, dotted and camelCase: apiKey -> api, key
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic and others (sk-proj-..., sk-ant-...)
    r"|(?<![A-Za-z0-9_])(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"  # GitHub
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"  # an Authorization header
)
_MIN_ENV_SECRET = 8  # shorter environment values ("1", "true") would redact ordinary text


def is_secret_name(name: str) -> bool:
    """Whether a config key or environment variable named ``name`` holds a secret (by its words, any case)."""
    words = [w.lower() for w in _WORDS.findall(str(name))]
    return bool(words) and "_".join(words) not in _HASHES and (words[-1] in _SECRET_LAST or any(w in _SECRET_WORDS for w in words))


def _env_secrets() -> list[str]:
    values = {v.strip() for k, v in os.environ.items() if is_secret_name(k) and len(v.strip()) >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)  # a longer secret first, so a shorter one inside it cannot leave a tail


def redact_text(text: str, _env: list[str] | None = None) -> str:
    """``text`` with every secret-looking token and every secret environment value replaced by ``REDACTED``."""
    for secret in _env_secrets() if _env is None else _env:
        text = text.replace(secret, REDACTED)
    return _TOKENS.sub(REDACTED, text)


def redact(value: Any, _env: list[str] | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with secrets replaced (see the module docstring)."""
    env = _env_secrets() if _env is None else _env
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_name(k) and v not in (None, "") and not isinstance(v, bool) else redact(v, env)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, env) for v in value]
    if isinstance(value, str):
        return redact_text(value, env)
    return value
