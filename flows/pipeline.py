"""The full pipeline as one flow: generate -> critique/revise -> label both orders, each stage a subflow.

Every stage takes a YAML config path and/or overrides (the same keys as the stage
commands), so a deployment in ``prefect.yaml`` or ``aifeedback schedule pipeline``
runs exactly what the CLI would. Stages resume inside the run directory, so a
scheduled re-run recomputes only what changed.
"""

from __future__ import annotations

from pathlib import Path

from .generate import run_generate
from .label import run_label
from .revise import run_revise


def run_pipeline(
    run_dir: str = "runs/pipeline",
    generate_config: str | None = None,
    generate: dict | None = None,
    revise_config: str | None = None,
    revise: dict | None = None,
    label_config: str | None = None,
    label: dict | None = None,
    skip_revise: bool = False,
) -> dict:
    """generate -> revise (unless skipped) -> label. Returns each stage's counts and where its outputs are."""
    root = str(Path(run_dir).resolve())
    out = {"run_dir": root, "generate": run_generate(run_dir=root, config_path=generate_config, overrides=generate)}
    if not skip_revise:
        out["revise"] = run_revise(run_dir=root, config_path=revise_config, overrides=revise)
    out["label"] = run_label(run_dir=root, config_path=label_config, overrides=label)
    return {k: ({kk: v[kk] for kk in ("n_in", "n_out", "n_excluded", "model_calls") if kk in v} if isinstance(v, dict) else v) for k, v in out.items()}
