"""Generation flow: n seeded responses per prompt, batched, resumable, in the run store."""

from __future__ import annotations

from pathlib import Path

from aifeedback.config import GenerateConfig, build_config
from aifeedback.generation import GenerateJob, load_prompts
from aifeedback.stage import execute_stage
from aifeedback.store import RunStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = REPO / "data" / "prompts" / "prompts.jsonl"


def default_input(cfg: GenerateConfig) -> str:
    return cfg.input or str(DEFAULT_PROMPTS)


def run_generate(run_dir: str = "runs/default", config_path: str | None = None, overrides: dict | None = None, max_batches: int | None = None) -> dict:
    """Generate ``sampling.n`` responses for every prompt; re-runs compute only missing batches."""
    cfg = build_config(GenerateConfig, config_path, overrides)
    store = RunStore(run_dir)
    items, excluded = load_prompts(default_input(cfg), cfg.prompt_column, cfg.id_column, cfg.limit)
    store.write_json("configs/generate.json", cfg.model_dump(mode="json"))
    return execute_stage(store, GenerateJob(cfg), items, cfg.batch_size, excluded, max_batches=max_batches)
