"""Iterative online RLAIF, stage by stage (flows/loop.py runs the stages in order).

Modules: :mod:`.config` (LoopConfig and the input checks), :mod:`.rundir` (run directory,
stage markers, events), :mod:`.sampling` (prompt split, policy sampling, log-probabilities),
:mod:`.stages` (sample, label, train, eval, baseline), :mod:`.stats` (win rates and CIs),
:mod:`.report` (report.html and report.json).

Run directory layout::

    RUN/loop_config.json           the config (a re-run must match it; only `iterations` may grow)
    RUN/baseline/eval.parquet      the initial policy's held-out samples (once)
    RUN/iter-K/                    a run store: responses/ and labels/ stages, readable by export and agreement
    RUN/iter-K/policy/             the checkpoint after preference optimisation
    RUN/iter-K/eval.parquet        new vs initial samples on the held-out prompts, with evaluator rewards
    RUN/iter-K/_stages/STAGE.json  written last by each finished stage (sample, label, train, eval): its figures and seconds
    RUN/events.jsonl               one line per stage run or skipped

A stage whose marker exists is skipped, so a crash resumes at the unfinished stage
of the unfinished iteration; the label stage also resumes batch by batch.
"""
