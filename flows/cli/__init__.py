"""The ``aifeedback`` command line (Typer + Rich), by responsibility: the app and its error handling
(:mod:`.app`); each stage's options, declared once (:mod:`.options`); the stage commands and their
estimates (:mod:`.stages`); training and the loop (:mod:`.training`); data commands (:mod:`.data`);
operations (:mod:`.ops`). Flows are imported lazily, so ``--help`` is quick.
"""

from . import batch, data, ops, stages, training  # noqa: F401  (each registers its commands on the app; --help lists them in this order)
from .app import app, console
from .options import STAGES

# the config each command builds (--config FILE, --set key=value and its config options)
COMMAND_CONFIGS: dict[str, type] = {**{s.name: s.config for s in STAGES.values()}, "train-rm": training.RewardConfig, "train-rl": training.RLConfig, "train-dpo": training.DPOTrainConfig, "loop": training.LoopConfig}

__all__ = ["COMMAND_CONFIGS", "app", "console", "main"]


def main() -> None:  # pragma: no cover
    app()
