"""Iterative online RLAIF, stage by stage (flows/loop.py runs the stages in order).

Modules: :mod:`.config` (LoopConfig and the input checks), :mod:`.rundir` (run directory,
stage markers, events), :mod:`.sampling` (prompt split, policy sampling, log-probabilities),
:mod:`.stages` (sample, label, train, eval, baseline), :mod:`.stats` (win rates and CIs),
:mod:`.evaluators` (several evaluators: names, agreement, the evaluator card evaluation.json),
:mod:`.report` (report.html and report.json).

Run directory layout::

    RUN/loop_config.json           the config (a re-run must match it; only `iterations` may grow)
    RUN/baseline/eval.parquet      the initial policy's held-out samples (sampled once), one row per evaluator and sample
    RUN/iter-K/                    a run store: responses/ and labels/ stages, readable by export and agreement
    RUN/iter-K/policy/             the checkpoint after preference optimisation
    RUN/iter-K/eval.parquet        the new policy's held-out samples, one row per evaluator and sample, with its reward
    RUN/iter-K/_stages/STAGE.json  written last by each finished stage (sample, label, train, eval): its figures and seconds
                                   (eval: per evaluator, their agreement, and the evaluator set it was computed for)
    RUN/events.jsonl               one line per stage run or skipped

A stage whose marker exists is skipped, so a crash resumes at the unfinished stage
of the unfinished iteration; the label stage also resumes batch by batch. An eval marker
recorded for other evaluators is stale: a re-run with other evaluators redoes only the eval stages.
"""
