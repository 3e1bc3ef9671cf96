"""The full pipeline as one flow: generate -> critique/revise -> label both orders, each stage a subflow.

Every stage takes a YAML config path and/or overrides (the same keys as the stage
commands), so a deployment in ``prefect.yaml`` or ``aifeedback schedule pipeline``
runs exactly what the CLI would. Stages resume inside the run directory, so a
scheduled re-run recomputes only what changed.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from .generate import generate_flow
from .label import label_flow
from .revise import revise_flow


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
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
    out = {"run_dir": root, "generate": generate_flow(run_dir=root, config_path=generate_config, overrides=generate)}
    if not skip_revise:
        out["revise"] = revise_flow(run_dir=root, config_path=revise_config, overrides=revise)
    out["label"] = label_flow(run_dir=root, config_path=label_config, overrides=label)
    return {k: ({kk: v[kk] for kk in ("n_in", "n_out", "n_excluded", "model_calls") if kk in v} if isinstance(v, dict) else v) for k, v in out.items()}
