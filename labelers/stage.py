"""The label stage, built one way for every caller: the label command, the loop and ``estimate``.

:func:`build_label_stage` picks the job (the LLM judge, or a reward model for
``labeler="rm:PATH"``) and the pairs (a pairs file, or the run's responses), and
:meth:`LabelStage.run` runs it through the core driver with the manifest every
label job writes (:func:`aifeedback.batches.label_manifest`). Imported verdicts
(``import-labels``) build a :class:`LabelStage` from their own job and pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aifeedback.batches import LabelStageJob, label_manifest
from aifeedback.config import LabelConfig
from aifeedback.errors import ConfigError
from aifeedback.stage import Submitter, execute_stage
from aifeedback.store import RunStore

from .job import LabelJob, iter_pairs, pairs_from_responses


@dataclass
class LabelStage:
    """A label job and its input: run it, estimate it, or read what it would key."""

    job: LabelStageJob
    items: Iterable[Any]
    batch_size: int
    input_excluded: list[dict] | None = None

    def run(self, store: RunStore, *, max_batches: int | None = None, submitter: Submitter | None = None, show_progress: bool = True) -> dict:
        return execute_stage(
            store,
            self.job,
            self.items,
            self.batch_size,
            input_excluded=self.input_excluded,
            max_batches=max_batches,
            submitter=submitter,
            extra_manifest=label_manifest(self.job),
            show_progress=show_progress,
        )


def label_job(cfg: LabelConfig, labeler: str | None = None, gold: str | None = None) -> LabelStageJob:
    """The job for ``labeler``: ``None``/``llm`` the LLM judge of ``cfg``; ``rm:PATH`` a reward model (temperature fitted on ``gold`` when given)."""
    if labeler in (None, "llm"):
        if gold:
            raise ConfigError("`gold` fits a reward model labeler's temperature; set `labeler` to rm:PATH with it")
        return LabelJob(cfg)
    from .rm_labeler import rm_label_job

    return rm_label_job(labeler, cfg, gold)


def build_label_stage(store: RunStore, cfg: LabelConfig, labeler: str | None = None, gold: str | None = None, pairs: Iterable[Any] | None = None) -> LabelStage:
    """The label stage of ``store``: ``pairs`` when given, else the config's pairs file (``input``), else every pair of the run's responses."""
    job = label_job(cfg, labeler, gold)
    if pairs is None:
        pairs = iter_pairs(cfg) if cfg.input else pairs_from_responses(store, cfg.limit)
    return LabelStage(job, pairs, cfg.batch_size)
