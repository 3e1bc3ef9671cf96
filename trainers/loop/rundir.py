"""The loop's run directory: where each iteration lives, the stage markers that make a re-run resume, the event log.

A stage whose marker exists is skipped (:func:`run_stage`), so a crash resumes at the
unfinished stage of the unfinished iteration; a marker recorded for other evaluators
(the eval stage's key) is stale and its stage runs again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from aifeedback.errors import ConfigError
from aifeedback.redact import redact

from .config import LoopConfig, upgrade_config

STAGES = ("sample", "label", "train", "eval")


def iter_dir(run: Path, k: int) -> Path:
    return run / f"iter-{k}"


def marker(run: Path, k: int, stage: str) -> Path:
    return iter_dir(run, k) / "_stages" / f"{stage}.json"


def atomic_json(dest: Path, data: dict) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, dest)


def stage_done(run: Path, k: int, stage: str) -> dict | None:
    m = marker(run, k, stage)
    return json.loads(m.read_text()) if m.is_file() else None


def finish_stage(run: Path, k: int, stage: str, info: dict, seconds: float) -> dict:
    info = {**info, "stage": stage, "iteration": k, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_json(marker(run, k, stage), info)
    return info


def log_event(run: Path, entry: dict) -> None:
    with open(run / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(), **entry}, default=str) + "\n")


def events(run: Path) -> list[dict]:
    p = run / "events.jsonl"
    out = []
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _dotted(d: dict, prefix: str = "") -> dict:
    """{"dpo": {"beta": 0.1}} -> {"dpo.beta": 0.1}: a config's keys as the user sets them."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def saved_config(run: Path) -> dict:
    """RUN/loop_config.json in today's shape ({} when there is none)."""
    path = run / "loop_config.json"
    return upgrade_config(json.loads(path.read_text())) if path.is_file() else {}


# settings a re-run may change: more iterations run more stages; other evaluators redo only the eval stages (their marker records the evaluators)
MAY_CHANGE = ("iterations", "evaluator", "gen_batch_size")  # gen_batch_size: seeded rows decode alike in any batch


def check_run_config(run: Path, cfg: LoopConfig) -> None:
    """A run dir holds one loop: a re-run must pass the same config, but for MAY_CHANGE."""
    new = redact(cfg.model_dump(mode="json"))  # a label backend of your own may hold a key in backend.options
    if (run / "loop_config.json").is_file():
        old, cur = _dotted(saved_config(run)), _dotted(new)
        backend = cfg.label.backend
        if getattr(backend, "dtype", None) == "device":  # the dtype the judge loads in here, as its keys hold it
            for d in (old, cur):
                if d.get("label.backend.dtype") == "device":
                    d["label.backend.dtype"] = backend.resolved_dtype()
        diff = sorted(k for k in set(old) | set(cur) if k not in MAY_CHANGE and old.get(k) != cur.get(k))
        if diff:
            raise ConfigError(f"{run} holds a loop with other settings ({', '.join(diff)}); pass a new --run-dir, or the same settings to resume it")
    atomic_json(run / "loop_config.json", new)


def policy_for(run: Path, cfg: LoopConfig, k: int) -> str:
    """The policy iteration k starts from: the initial one, or iteration k-1's checkpoint."""
    return cfg.policy if k == 1 else str(iter_dir(run, k - 1) / "policy")


def run_stage(run: Path, k: int, stage: str, fn, *args, key: dict | None = None) -> dict:
    """Run one stage of iteration k unless its marker exists (then its recorded figures); logged to RUN/events.jsonl.

    ``key``: marker fields the finished stage must have recorded with these values (the eval stage's
    ``evaluator_set``); a marker that differs is stale, and the stage runs again.
    """
    done = stage_done(run, k, stage)
    if done is not None and key and any(done.get(f) != v for f, v in key.items()):
        log_event(run, {"iteration": k, "stage": stage, "event": "stale", "changed": sorted(f for f, v in key.items() if done.get(f) != v)})
        done = None
    if done is not None:
        log_event(run, {"iteration": k, "stage": stage, "event": "skipped"})
        return done
    log_event(run, {"iteration": k, "stage": stage, "event": "started"})
    info = fn(*args)
    log_event(run, {"iteration": k, "stage": stage, "event": "finished", "seconds": info.get("seconds")})
    return info
