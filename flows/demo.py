"""The demo pipeline on the embedded default models, as one Prefect flow with the stages as subflows."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from .generate import generate_flow


@flow(name="demo", log_prints=True)
def demo_flow(run_dir: str = "runs/demo", n_prompts: int = 6) -> dict:
    """generate -> (more stages as they land). Returns where each output is."""
    root = Path(run_dir).resolve()
    gen = generate_flow(
        run_dir=str(root),
        overrides={"limit": n_prompts, "sampling": {"n": 2, "max_new_tokens": 48, "temperature": 0.8}, "batch_size": 8},
    )
    return {
        "run directory": str(root),
        "responses": f"{root / 'responses'} ({gen['n_out']} rows, {gen['n_excluded']} excluded)",
    }
