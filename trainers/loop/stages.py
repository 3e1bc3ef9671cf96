"""The loop's four stages on iteration k (sample, label, train, eval) and the initial policy's baseline.

Each stage is a plain function of (run dir, config, k, ...) that ends with its marker
(rundir.finish_stage); flows/loop.py runs them in order through rundir.run_stage, which skips
finished ones (the eval stage's marker must also record the current evaluators: evaluator_key).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from aifeedback.errors import InputError
from labelers.job import pairs_from_responses

from .config import LoopConfig
from .evaluators import Evaluator, pair_agreement, verdicts
from .rundir import atomic_json, finish_stage, iter_dir, marker, policy_for
from .sampling import policy_backend, responses_rows, sample, seq_logprob
from .stats import win_stats


def stage_sample(run: Path, cfg: LoopConfig, k: int, train: list[dict]) -> dict:
    """The current policy samples n responses per training prompt into iter-k's responses stage."""
    from aifeedback.records import RESPONSES
    from aifeedback.store import RunStore

    t0 = time.perf_counter()
    policy = policy_for(run, cfg, k)
    seed = cfg.seed + k
    samples = sample(policy_backend(policy, cfg.gen_batch_size), train, cfg.n_responses, cfg.max_new_tokens, cfg.sampling_temperature, seed)
    rows = responses_rows(samples, policy, seed)
    store = RunStore(iter_dir(run, k))
    key = f"iter{k}-{len(rows)}"
    for r in rows:
        r["batch_key"] = key
    store.write_batch("responses", key, rows, RESPONSES)
    store.write_manifest("responses", [key], {"n_in": len(train), "n_out": len(rows), "n_excluded": 0, "model": policy, "seed": seed})
    lengths = [r["completion_tokens"] for r in rows]
    return finish_stage(run, k, "sample", {"policy": policy, "n_prompts": len(train), "n_responses": len(rows), "mean_tokens": sum(lengths) / len(lengths)}, time.perf_counter() - t0)


def labeler_temperature(run: Path, cfg: LoopConfig) -> dict:
    """The RM labeler's T, fitted once on the gold slice (cached in RUN/labeler_temperature.json)."""
    from labelers.rm_labeler import cached_scorer, fit_rm_temperature, read_gold

    path = run / "labeler_temperature.json"
    if path.is_file():
        return json.loads(path.read_text())
    if cfg.gold:
        fit = fit_rm_temperature(cached_scorer(cfg.rm_path), read_gold(cfg.gold))
    else:
        fit = {"temperature": cfg.label.temperature, "n_gold": 0, "gold_accuracy": None}
    atomic_json(path, fit)
    return fit


def label_stage(run: Path, cfg: LoopConfig, store):
    """Iter-k's label stage, built as the label command builds it (labelers/stage.py); an RM labeler's temperature is fitted once per run."""
    from labelers.stage import build_label_stage

    label_cfg = cfg.label
    if cfg.rm_path:  # the temperature fitted on the loop's gold once (labeler_temperature), the loop's seed on every row
        label_cfg = cfg.label.model_copy(update={"temperature": labeler_temperature(run, cfg)["temperature"], "seed": cfg.seed})
    return build_label_stage(store, label_cfg, cfg.labeler if cfg.rm_path else None, pairs=pairs_from_responses(store))


def stage_label(run: Path, cfg: LoopConfig, k: int) -> dict:
    """Label every pair of iter-k's responses with the chosen labeler (the label stage, resumable by batch)."""
    from aifeedback.store import RunStore

    t0 = time.perf_counter()
    store = RunStore(iter_dir(run, k))
    stage = label_stage(run, cfg, store)
    pairs = stage.items
    summary = stage.run(store, show_progress=False)
    if not summary["complete"]:
        raise InputError(f"iteration {k}: the label stage did not complete; re-run to resume it")
    rows = store.read_table("labels").to_pylist()
    hard = [r["hard_label"] for r in rows]
    longer = [r for r in rows if r["hard_label"] in ("A", "B") and len(r["response_a"]) != len(r["response_b"])]
    pref_longer = sum((r["hard_label"] == "A") == (len(r["response_a"]) > len(r["response_b"])) for r in longer) / len(longer) if longer else None
    info = {"labeler": cfg.labeler if cfg.rm_path else f"llm:{cfg.label.backend.model}", "n_pairs": len(pairs), "n_labelled": summary["n_out"], "n_excluded": summary["n_excluded"], "ties": hard.count("tie"), "labeler_prefers_longer": pref_longer, "temperature": stage.job.derivation().temperature, "model_seconds": summary["model_seconds"]}
    return finish_stage(run, k, "label", info, time.perf_counter() - t0)


def stage_train(run: Path, cfg: LoopConfig, k: int, train_prompts: list[dict]) -> dict:
    """DPO (or GRPO) from the current policy; the checkpoint is written to iter-k/policy atomically."""
    from aifeedback.store import RunStore

    from ..rl import dpo_dataset, load_policy, train_dpo, train_grpo

    t0 = time.perf_counter()
    policy = policy_for(run, cfg, k)
    d = iter_dir(run, k)
    work = d / "_trl"
    shutil.rmtree(work, ignore_errors=True)
    (d / "_stages").mkdir(parents=True, exist_ok=True)
    (d / "_stages" / "train.started").write_text(str(os.getpid()))
    for stale in (marker(run, k, "eval"), d / "eval.parquet"):  # an evaluation of an earlier checkpoint
        stale.unlink(missing_ok=True)
    model, tok = load_policy(policy)
    seed = cfg.seed + k
    if cfg.method == "dpo":
        labels = RunStore(d).read_table("labels").to_pylist()
        n_labelled = len(labels)
        if cfg.dpo_pairs == "best_worst":
            labels = best_worst(labels)
        dcfg = cfg.dpo_for(policy, seed)
        rows, smoothing = dpo_dataset(labels, dcfg)
        if not rows:
            raise InputError(f"iteration {k}: every labelled pair is a tie or dropped by dpo.min_confidence / dpo.consistency, so there is nothing to train on; lower label.tie_margin or dpo.min_confidence, set dpo.consistency=any, or sample more responses")
        res = train_dpo(dcfg, rows, str(work), smoothing, model=model, tokenizer=tok)
        info = {"method": "dpo", "dpo_pairs": cfg.dpo_pairs, "n_labelled": n_labelled, "n_selected": len(labels), "n_pairs": len(rows), "label_smoothing": smoothing, "steps": res["steps"], "loss_first": res["losses"][0] if res["losses"] else None, "loss_last": res["losses"][-1] if res["losses"] else None}
    else:
        from labelers.rm_labeler import cached_scorer

        scorer = cached_scorer(cfg.rm_path)

        def reward(prompts, completions, **kw):
            from ..rl import _text

            return scorer.score([scorer_prompt(p) for p in prompts], [_text(c) for c in completions])

        reward.__name__ = "rm_labeler"
        res = train_grpo(cfg.grpo_for(policy, seed), [p["messages"] for p in train_prompts], str(work), reward_fn=reward, model=model, tokenizer=tok)
        info = {"method": "grpo", "steps": res["steps"], "reward_curve": res["reward_curve"]}
    trained = res["trainer"].model
    tmp = d / "policy.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trained.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(d / "policy", ignore_errors=True)
    os.replace(tmp, d / "policy")
    shutil.rmtree(work, ignore_errors=True)
    return finish_stage(run, k, "train", {**info, "from_policy": policy, "checkpoint": str(d / "policy")}, time.perf_counter() - t0)


def best_worst(label_rows: list[dict]) -> list[dict]:
    """Per prompt, the labelled pair between its best and its worst response.

    A response's score is its summed win probability (p_a as A, 1 - p_a as B) over the pairs it is
    in; the pair joining the top and the bottom scorer is kept, oriented by its own label (so a tie
    stays a tie and is dropped by dpo_dataset). Pairs without a soft label (excluded) are skipped.
    """
    by_prompt: dict[str, list[dict]] = {}
    for r in label_rows:
        if r.get("p_a") is not None:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    out = []
    for rows in by_prompt.values():
        score: dict[str, float] = {}
        for r in rows:
            score[r["response_a"]] = score.get(r["response_a"], 0.0) + r["p_a"]
            score[r["response_b"]] = score.get(r["response_b"], 0.0) + 1 - r["p_a"]
        ranked = sorted(score, key=lambda t: (-score[t], t))
        top, bottom = ranked[0], ranked[-1]
        pick = [r for r in rows if {r["response_a"], r["response_b"]} == {top, bottom}]
        if pick:
            out.append(pick[0])
    return out


def scorer_prompt(p) -> str:
    from labelers.rm_labeler import prompt_text

    return prompt_text(p) if isinstance(p, list) else str(p)


# iter-K/eval.parquet and baseline/eval.parquet: one row per (evaluator, held-out prompt, sample); the sample columns
# repeat for each evaluator, so filtering on `evaluator` gives one evaluator's table
SAMPLE_COLUMNS = ("prompt_id", "sample_index", "prompt", "response", "tokens", "chars", "logp_new", "logp_ref")


def eval_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("evaluator", pa.string()),  # its name in the report
            ("evaluator_path", pa.string()),  # its resolved folder
            ("evaluator_weights", pa.string()),  # its weights file: name:size:mtime_ns (Evaluator.identity)
            ("prompt_id", pa.string()),
            ("sample_index", pa.int64()),
            ("prompt", pa.string()),  # the last user turn
            ("response", pa.string()),
            ("tokens", pa.int64()),  # generated tokens, the stop token included
            ("chars", pa.int64()),
            ("reward", pa.float64()),  # this evaluator's reward
            ("logp_new", pa.float64()),  # log pi_new of the response at the sampling temperature (null in the baseline)
            ("logp_ref", pa.float64()),  # log pi_initial of it
        ]
    )


def _sample_rows(samples: list[dict], logp_new: list[float] | None = None, logp_ref: list[float] | None = None) -> list[dict]:
    return [
        {"prompt_id": x["prompt_id"], "sample_index": x["sample_index"], "prompt": x["messages"][-1]["content"], "response": x["response"], "tokens": len(x["gen_ids"]), "chars": len(x["response"]), "logp_new": None if logp_new is None else logp_new[j], "logp_ref": None if logp_ref is None else logp_ref[j]}
        for j, x in enumerate(samples)
    ]


def _stored_samples(dest: Path, held: list[dict], n: int, need_logp: bool) -> list[dict] | None:
    """The sample rows of an eval table already written (any evaluator's, or a table from before several evaluators),
    when it holds exactly held x n samples; else None (sample again)."""
    import pyarrow.parquet as pq

    if not dest.is_file():
        return None
    table = pq.read_table(dest)
    if not set(SAMPLE_COLUMNS) <= set(table.column_names):
        return None
    rows = {}
    for r in table.select(list(SAMPLE_COLUMNS)).to_pylist():
        rows.setdefault((r["prompt_id"], r["sample_index"]), r)
    want = {(p["prompt_id"], i) for p in held for i in range(n)}
    if set(rows) != want or (need_logp and any(r["logp_new"] is None or r["logp_ref"] is None for r in rows.values())):
        return None
    order = {p["prompt_id"]: j for j, p in enumerate(held)}
    return sorted(rows.values(), key=lambda r: (order[r["prompt_id"]], r["sample_index"]))


def _scored(rows: list[dict], held: list[dict], evaluators: list[Evaluator]) -> list[dict]:
    """The sample rows once per evaluator, with its reward (the prompt as the reward model reads it: the whole chat)."""
    from labelers.rm_labeler import cached_scorer

    messages = {p["prompt_id"]: p["messages"] for p in held}
    out = []
    for ev in evaluators:
        ident = ev.identity()
        rewards = cached_scorer(ev.path).score([scorer_prompt(messages[r["prompt_id"]]) for r in rows], [r["response"] for r in rows])
        out += [{"evaluator": ev.name, "evaluator_path": ident["path"], "evaluator_weights": ident["weights"], **r, "reward": w} for r, w in zip(rows, rewards)]
    return out


def _same(row: dict, ident: dict) -> bool:
    return (row.get("evaluator"), row.get("evaluator_path"), row.get("evaluator_weights")) == (ident["name"], ident["path"], ident["weights"])


def _write_parquet(rows: list[dict], dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    pq.write_table(pa.Table.from_pylist(rows, schema=eval_schema()), tmp)
    os.replace(tmp, dest)


def baseline(run: Path, cfg: LoopConfig, held: list[dict]) -> dict:
    """The initial policy's held-out samples (sampled once per run), scored by each evaluator (each once: a re-run with a
    new evaluator scores the stored samples, and drops the rows of evaluators no longer given)."""
    import pyarrow.parquet as pq

    dest = run / "baseline" / "eval.parquet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    have = pq.read_table(dest).to_pylist() if dest.is_file() else []
    samples = _stored_samples(dest, held, cfg.eval_samples, need_logp=False)
    sampled = samples is None
    if sampled:
        have = []
        samples = _sample_rows(sample(policy_backend(cfg.policy, cfg.gen_batch_size), held, cfg.eval_samples, cfg.max_new_tokens, cfg.sampling_temperature, cfg.seed + 10_000))
    rows, missing = [], []
    for ev in cfg.evaluators:
        ident = ev.identity()
        mine = [r for r in have if _same(r, ident)]
        rows += mine
        if not mine:
            missing.append(ev)
    rows += _scored(samples, held, missing)
    if sampled or missing or len(rows) != len(have):
        _write_parquet(rows, dest)
        info_path = run / "baseline" / "info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() and not sampled else {"seconds": 0.0}
        info.update(seconds=round(info.get("seconds", 0.0) + time.perf_counter() - t0, 2), n=len(samples), evaluators=[ev.name for ev in cfg.evaluators])
        atomic_json(info_path, info)
    order = [ev.name for ev in cfg.evaluators]
    rows.sort(key=lambda r: order.index(r["evaluator"]))
    return {"rows": rows, "sampled": sampled, "scored": [ev.name for ev in missing]}


def evaluator_key(cfg: LoopConfig) -> dict:
    """The eval stage's marker key: a marker recorded for other evaluators (names, folders, weights) is stale."""
    return {"evaluator_set": [ev.identity() for ev in cfg.evaluators]}


def stage_eval(run: Path, cfg: LoopConfig, k: int, held: list[dict]) -> dict:
    """iter-k's policy vs the initial one on the held-out prompts, by each evaluator on the same samples; their agreement;
    KL(new || initial) estimated on the new samples.

    The new policy's samples (and log-probabilities) already in iter-k/eval.parquet are reused, so a re-run with
    other evaluators only scores (stage_train deletes the table when it writes a new checkpoint).
    """
    t0 = time.perf_counter()
    evaluators = cfg.evaluators
    base = baseline(run, cfg, held)["rows"]
    d = iter_dir(run, k)
    dest = d / "eval.parquet"
    samples = _stored_samples(dest, held, cfg.eval_samples, need_logp=True)
    reused = samples is not None
    if not reused:
        new = policy_backend(str(d / "policy"), cfg.gen_batch_size)
        drawn = sample(new, held, cfg.eval_samples, cfg.max_new_tokens, cfg.sampling_temperature, cfg.seed + 10_000)
        logp_new = seq_logprob(new.model, drawn, cfg.sampling_temperature)
        logp_ref = seq_logprob(policy_backend(cfg.policy, cfg.gen_batch_size).model, drawn, cfg.sampling_temperature)
        samples = _sample_rows(drawn, logp_new, logp_ref)
    rows = _scored(samples, held, evaluators)
    _write_parquet(rows, dest)
    per, votes = [], {}
    for ev in evaluators:
        mine = [r for r in rows if r["evaluator"] == ev.name]
        theirs = [r for r in base if r["evaluator"] == ev.name]
        per.append({"name": ev.name, **ev.identity(), "independent": cfg.independent(ev), **win_stats(mine, theirs, cfg.n_boot, cfg.seed + k)})
        votes[ev.name] = verdicts(mine, theirs)
    kl = [r["logp_new"] - r["logp_ref"] for r in samples]
    shared = {f: per[0][f] for f in ("n", "n_prompts", "mean_tokens_new", "mean_tokens_initial")}  # the same samples for every evaluator
    info = {**evaluator_key(cfg), "evaluators": per, "agreement": pair_agreement(votes), **shared, "kl_to_initial": sum(kl) / len(kl), "samples_reused": reused}
    return finish_stage(run, k, "eval", info, time.perf_counter() - t0)
