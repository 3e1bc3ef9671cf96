"""The Prefect flows: each command's plain function, wrapped as a Prefect flow (imported only when Prefect is used).

Commands run these instead of the plain functions when Prefect earns its keep: a
Prefect API is configured, a shared server is running, or ``--prefect`` is given
(:func:`flows.common.prefect_wanted`). Schedules and ``prefect.yaml``'s deployments
always use them (entrypoints ``flows.prefect_flows:label_flow`` ...). Inside a flow
run, each stage's batches are Prefect tasks (:class:`flows.common.PrefectTasks`).
"""

from __future__ import annotations

from typing import Any

from prefect import Flow

from aifeedback.redact import redact

from . import (
    agreement,
    demo,
    export,
    generate,
    import_labels,
    label,
    loop,
    pipeline,
    revise,
    train,
)


class RedactedFlow(Flow):
    """A Prefect flow whose runs' parameters are recorded with secrets redacted (aifeedback/redact.py), since a
    command's overrides may hold a plugin backend's key (``backend.options``); the function still gets them whole."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return redact(super().serialize_parameters(parameters))


def flow(**kwargs: Any):
    """``prefect.flow(**kwargs)``, making a :class:`RedactedFlow`."""
    return lambda fn: RedactedFlow(fn, **kwargs)


generate_flow = flow(name="generate", log_prints=True)(generate.run_generate)
revise_flow = flow(name="revise", log_prints=True)(revise.run_revise)
label_flow = flow(name="label", log_prints=True)(label.run_label)
import_labels_flow = flow(name="import-labels", log_prints=True)(import_labels.run_import_labels)
pipeline_flow = flow(name="pipeline", log_prints=True)(pipeline.run_pipeline)
agreement_flow = flow(name="agreement", log_prints=True)(agreement.run_agreement)
export_flow = flow(name="export", log_prints=True)(export.run_export)
demo_flow = flow(name="demo", log_prints=True)(demo.run_demo)
train_rm_flow = flow(name="train-rm", log_prints=True)(train.run_train_rm)
train_rl_flow = flow(name="train-rl", log_prints=True)(train.run_train_rl)
train_dpo_flow = flow(name="train-dpo", log_prints=True)(train.run_train_dpo)
loop_flow = flow(name="loop", log_prints=True)(loop.run_loop)

# the Prefect flow of each plain function, by the plain function's name (what the CLI runs)
BY_FUNCTION = {f.fn.__name__: f for f in (generate_flow, revise_flow, label_flow, import_labels_flow, pipeline_flow, agreement_flow, export_flow, demo_flow, train_rm_flow, train_rl_flow, train_dpo_flow, loop_flow)}
