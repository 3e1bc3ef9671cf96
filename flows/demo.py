"""The demo pipeline on the embedded default models, as one Prefect flow with the stages as subflows."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from .generate import generate_flow
from .label import label_flow
from .revise import revise_flow


@flow(name="demo", log_prints=True)
def demo_flow(run_dir: str = "runs/demo", n_prompts: int = 4) -> dict:
    """generate -> critique/revise -> label both orders. Returns where each output is."""
    root = Path(run_dir).resolve()
    gen = generate_flow(
        run_dir=str(root),
        overrides={"limit": n_prompts, "sampling": {"n": 2, "max_new_tokens": 40, "temperature": 0.8}, "batch_size": 16},
    )
    rev = revise_flow(run_dir=str(root), overrides={"rounds": 1, "sampling": {"max_new_tokens": 40}, "batch_size": 16})
    lab = label_flow(run_dir=str(root), overrides={"batch_size": 64})
    return {
        "run directory": str(root),
        "responses": f"{root / 'responses'} ({gen['n_out']} rows, {gen['n_excluded']} excluded)",
        "revision chains": f"{root / 'revisions'} ({rev['n_out']} rows, {rev.get('n_degenerate', 0)} flagged degenerate, {rev['n_excluded']} excluded)",
        "SFT set": rev.get("sft", ""),
        "revision preference pairs (TRL columns)": rev.get("preferences", ""),
        "AI labels, both orders": f"{root / 'labels'} ({lab['n_out']} labelled, {lab['n_excluded']} excluded)",
    }
