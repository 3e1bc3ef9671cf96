"""Iterative online RLAIF, stage by stage (flows/loop.py runs these as Prefect tasks).

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

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from aifeedback.errors import ConfigError, InputError

from .loop_config import LoopConfig

STAGES = ("sample", "label", "train", "eval")
INDEPENDENCE_WARNING = "the evaluator is the labeler's own reward model: the evaluation is then not independent (the policy is judged by what it was trained to please); pass an evaluator trained on other labels"


# run-directory bookkeeping -----------------------------------------------------
def iter_dir(run: Path, k: int) -> Path:
    return run / f"iter-{k}"


def marker(run: Path, k: int, stage: str) -> Path:
    return iter_dir(run, k) / "_stages" / f"{stage}.json"


def _atomic_json(dest: Path, data: dict) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, dest)


def stage_done(run: Path, k: int, stage: str) -> dict | None:
    m = marker(run, k, stage)
    return json.loads(m.read_text()) if m.is_file() else None


def finish_stage(run: Path, k: int, stage: str, info: dict, seconds: float) -> dict:
    info = {**info, "stage": stage, "iteration": k, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_json(marker(run, k, stage), info)
    return info


def log_event(run: Path, entry: dict) -> None:
    with open(run / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(), **entry}, default=str) + "\n")


def events(run: Path) -> list[dict]:
    p = run / "events.jsonl"
    out = []
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def check_run_config(run: Path, cfg: LoopConfig) -> None:
    """A run dir holds one loop: a re-run must pass the same config (more iterations are allowed)."""
    path = run / "loop_config.json"
    new = cfg.model_dump(mode="json")
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(new) if k != "iterations" and old.get(k) != new.get(k))
        if diff:
            raise ConfigError(f"{run} holds a loop with other settings ({', '.join(diff)}); pass a new --run-dir, or the same settings to resume it")
    _atomic_json(path, new)


def policy_for(run: Path, cfg: LoopConfig, k: int) -> str:
    """The policy iteration k starts from: the initial one, or iteration k-1's checkpoint."""
    return cfg.policy if k == 1 else str(iter_dir(run, k - 1) / "policy")


def check_inputs(cfg: LoopConfig) -> list[str]:
    """Clear errors for bad inputs before any model runs; returns warnings."""
    from labelers.rm_labeler import check_reward_model_dir

    notes = []
    if not cfg.prompts:
        raise InputError("the loop needs prompts: pass --prompts FILE (e.g. ../shared/data/self-instruct/user_oriented_instructions.jsonl)")
    if not cfg.evaluator:
        raise InputError("the loop needs an evaluator: pass --evaluator DIR, a reward model trained on labels independent of the labeler's (`aifeedback train-rm`)")
    check_reward_model_dir(cfg.evaluator)
    if cfg.rm_path:
        check_reward_model_dir(cfg.rm_path)
        if Path(cfg.rm_path).resolve() == Path(cfg.evaluator).resolve():
            notes.append(INDEPENDENCE_WARNING)
            warnings.warn(INDEPENDENCE_WARNING, stacklevel=2)
    if cfg.gold and not Path(cfg.gold).is_file():
        raise InputError(f"gold file {cfg.gold} does not exist; pass a JSONL of pairs with a human label A/B, or leave --gold out")
    return notes


# prompts -------------------------------------------------------------------------
def load_loop_prompts(cfg: LoopConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) prompts {prompt_id, messages}: a seeded split, disjoint."""
    from aifeedback.io import iter_rows, to_messages
    from aifeedback.records import stable_id

    items, seen = [], set()
    for n, row in enumerate(iter_rows(cfg.prompts), 1):
        if isinstance(row, tuple):
            continue
        if "instruction" in row and "instances" in row:  # self-instruct
            inst = (row.get("instances") or [{}])[0] or {}
            text = row["instruction"] + (("\n\n" + inst["input"]) if inst.get("input") else "")
        elif cfg.prompt_column in row:
            text = row[cfg.prompt_column]
        else:
            raise InputError(f"no column {cfg.prompt_column!r} in {cfg.prompts} (row {n}). Available columns: {sorted(row)}. Pass --set prompt_column=NAME.")
        messages, _ = to_messages(text)
        if messages is None:
            continue
        pid = stable_id(messages)
        if pid not in seen:
            seen.add(pid)
            items.append({"prompt_id": pid, "messages": messages})
    need = cfg.n_train_prompts + cfg.n_eval_prompts
    if len(items) < need:
        raise InputError(f"{cfg.prompts} has {len(items)} usable prompts, the loop needs n_train_prompts + n_eval_prompts = {need}; lower them or pass a larger prompts file")
    order = sorted(items, key=lambda x: x["prompt_id"])
    random.Random(cfg.split_seed).shuffle(order)
    return order[: cfg.n_train_prompts], order[cfg.n_train_prompts : need]


# sampling ------------------------------------------------------------------------
def policy_backend(model_id: str, batch_size: int):
    """The transformers backend on a policy (the embedded model or a checkpoint folder): its batched decoder samples."""
    from aifeedback.backends.hf_local import TransformersBackend
    from aifeedback.config import TransformersBackendConfig

    return TransformersBackend(TransformersBackendConfig(model=model_id, gen_batch_size=batch_size))


def sample(backend, prompts: list[dict], n: int, max_new_tokens: int, temperature: float, seed: int) -> list[dict]:
    """n sampled responses per prompt (the backend's batched decoder, full-vocabulary sampling at ``temperature``):
    dicts with prompt_id, messages, sample_index, response, ids (prompt, generated, the stop token included) and finish_reason.
    Each response has its own seed (seed, prompt position, sample index), so a sample does not depend on the batch it fell in."""
    from aifeedback.config import SamplingConfig

    tok = backend.tok
    jobs = [(j, p, i) for j, p in enumerate(prompts) for i in range(n)]
    ids = [backend.encode(backend.render(p["messages"])) for _, p, _ in jobs]
    seeds = [(seed * 1_000_003 + j * 1_009 + i) % 2**63 for j, _, i in jobs]
    params = SamplingConfig(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)
    out = []
    for (_, p, i), prompt_ids, (gen, finish) in zip(jobs, ids, backend.sample_tokens(ids, params, seeds)):
        text = tok.decode(gen, skip_special_tokens=True).strip()
        if finish == "stop":
            gen = gen + [tok.eos_token_id]  # the stop token's probability belongs to the sequence (KL)
        out.append({"prompt_id": p["prompt_id"], "messages": p["messages"], "sample_index": i, "response": text, "prompt_ids": prompt_ids, "gen_ids": gen, "finish_reason": finish})
    return out


def seq_logprob(model, samples: list[dict], temperature: float, batch_size: int = 16) -> list[float]:
    """Sum over generated tokens of log pi(token | prefix) at the sampling temperature.

    The output head runs only on the positions that predict a generated token (not on every prompt
    position), and sequences are batched by length, so little is spent on padding.
    """
    import torch

    out = [0.0] * len(samples)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["prompt_ids"]) + len(samples[i]["gen_ids"]))
    head = model.get_output_embeddings()
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if samples[i]["gen_ids"]]
        if not idx:
            continue
        seqs = [samples[i]["prompt_ids"] + samples[i]["gen_ids"] for i in idx]
        L = max(len(x) for x in seqs)
        ids = torch.zeros((len(seqs), L), dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        rows, cols, targets = [], [], []
        for j, i in enumerate(idx):
            a, b = len(samples[i]["prompt_ids"]), len(seqs[j])
            rows += [j] * (b - a)
            cols += list(range(a - 1, b - 1))
            targets += samples[i]["gen_ids"]
        with torch.inference_mode():
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = head(hidden[torch.tensor(rows), torch.tensor(cols)]).float() / temperature
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[:, None]).squeeze(-1)
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, torch.tensor(rows), lp.double())
        for j, i in enumerate(idx):
            out[i] = float(sums[j])
    return out


def responses_rows(samples: list[dict], model_id: str, seed: int) -> list[dict]:
    from aifeedback.config import config_hash
    from aifeedback.records import stable_id

    rows = []
    for x in samples:
        rid = stable_id(model_id, x["prompt_id"], x["sample_index"], seed)
        rows.append(
            {
                "response_id": rid,
                "prompt_id": x["prompt_id"],
                "messages": x["messages"],
                "response": x["response"],
                "sample_index": x["sample_index"],
                "seed": seed,
                "model": model_id,
                "backend": "transformers",
                "prompt_tokens": len(x["prompt_ids"]),
                "completion_tokens": len(x["gen_ids"]),
                "finish_reason": x["finish_reason"],
                "prompt_truncated": False,
                "config_hash": config_hash({"model": model_id, "seed": seed}),
                "item_key": rid,
                "batch_key": "",
            }
        )
    return rows


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


# labelling -----------------------------------------------------------------------
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
    _atomic_json(path, fit)
    return fit


def label_job(run: Path, cfg: LoopConfig):
    if cfg.rm_path:
        from labelers.rm_labeler import RMLabelJob

        t = labeler_temperature(run, cfg)["temperature"]
        return RMLabelJob(cfg.rm_path, temperature=t, tie_margin=cfg.label.tie_margin, seed=cfg.seed)
    from labelers.job import LabelJob

    return LabelJob(cfg.label)


def stage_label(run: Path, cfg: LoopConfig, k: int, execute) -> dict:
    """Label every pair of iter-k's responses with the chosen labeler (the label stage, resumable by batch).

    ``execute`` is flows.common.execute_stage (the flow passes it: trainers do not import flows).
    """
    from aifeedback.store import RunStore
    from labelers.job import pairs_from_responses

    t0 = time.perf_counter()
    store = RunStore(iter_dir(run, k))
    job = label_job(run, cfg)
    pairs = pairs_from_responses(store)
    extra = {"derive": job.derivation(), "labeler": cfg.labeler}
    summary = execute(store, job, pairs, cfg.label.batch_size, extra_manifest=extra, show_progress=False)
    if not summary["complete"]:
        raise InputError(f"iteration {k}: the label stage did not complete; re-run to resume it")
    rows = store.read_table("labels").to_pylist()
    hard = [r["hard_label"] for r in rows]
    longer = [r for r in rows if r["hard_label"] in ("A", "B") and len(r["response_a"]) != len(r["response_b"])]
    pref_longer = sum((r["hard_label"] == "A") == (len(r["response_a"]) > len(r["response_b"])) for r in longer) / len(longer) if longer else None
    info = {"labeler": cfg.labeler if cfg.rm_path else f"llm:{cfg.label.backend.model}", "n_pairs": len(pairs), "n_labelled": summary["n_out"], "n_excluded": summary["n_excluded"], "ties": hard.count("tie"), "labeler_prefers_longer": pref_longer, "temperature": job.derivation()["temperature"], "model_seconds": summary["model_seconds"]}
    return finish_stage(run, k, "label", info, time.perf_counter() - t0)


# preference optimisation ---------------------------------------------------------
def stage_train(run: Path, cfg: LoopConfig, k: int, train_prompts: list[dict]) -> dict:
    """DPO (or GRPO) from the current policy; the checkpoint is written to iter-k/policy atomically."""
    from aifeedback.store import RunStore

    from .rl import dpo_dataset, load_policy, train_dpo, train_grpo
    from .rl_config import DPOTrainConfig, RLConfig

    t0 = time.perf_counter()
    policy = policy_for(run, cfg, k)
    d = iter_dir(run, k)
    work = d / "_trl"
    shutil.rmtree(work, ignore_errors=True)
    (d / "_stages").mkdir(parents=True, exist_ok=True)
    (d / "_stages" / "train.started").write_text(str(os.getpid()))
    model, tok = load_policy(policy)
    seed = cfg.seed + k
    if cfg.method == "dpo":
        labels = RunStore(d).read_table("labels").to_pylist()
        n_labelled = len(labels)
        if cfg.dpo_pairs == "best_worst":
            labels = best_worst(labels)
        dcfg = DPOTrainConfig(policy=policy, beta=cfg.beta, soft_labels=cfg.soft_labels, min_confidence=cfg.min_confidence, epochs=cfg.epochs, batch_size=cfg.batch_size, max_length=cfg.max_length, lr=cfg.lr, seed=seed)
        rows, smoothing = dpo_dataset(labels, dcfg)
        if not rows:
            raise InputError(f"iteration {k}: every labelled pair is a tie or below min_confidence, so there is nothing to train on; lower label.tie_margin or min_confidence, or sample more responses")
        res = train_dpo(dcfg, rows, str(work), smoothing, model=model, tokenizer=tok)
        info = {"method": "dpo", "dpo_pairs": cfg.dpo_pairs, "n_labelled": n_labelled, "n_selected": len(labels), "n_pairs": len(rows), "label_smoothing": smoothing, "steps": res["steps"], "loss_first": res["losses"][0] if res["losses"] else None, "loss_last": res["losses"][-1] if res["losses"] else None}
    else:
        from labelers.rm_labeler import cached_scorer

        scorer = cached_scorer(cfg.rm_path)

        def reward(prompts, completions, **kw):
            from .rl import _text

            return scorer.score([scorer_prompt(p) for p in prompts], [_text(c) for c in completions])

        reward.__name__ = "rm_labeler"
        rcfg = RLConfig(policy=policy, reward="rm", reward_model=cfg.rm_path, kl_beta=cfg.beta, num_generations=cfg.n_responses, max_completion_length=cfg.max_new_tokens, batch_size=cfg.batch_size, max_steps=cfg.grpo_steps, lr=cfg.lr, seed=seed)
        res = train_grpo(rcfg, [p["messages"] for p in train_prompts], str(work), reward_fn=reward, model=model, tokenizer=tok)
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


# evaluation ----------------------------------------------------------------------
def _eval_table(samples: list[dict], rewards: list[float], logp_ref: list[float] | None = None, logp_new: list[float] | None = None):
    import pyarrow as pa

    rows = []
    for j, x in enumerate(samples):
        rows.append(
            {
                "prompt_id": x["prompt_id"],
                "sample_index": x["sample_index"],
                "prompt": x["messages"][-1]["content"],
                "response": x["response"],
                "tokens": len(x["gen_ids"]),
                "chars": len(x["response"]),
                "reward": rewards[j],
                "logp_new": None if logp_new is None else logp_new[j],
                "logp_ref": None if logp_ref is None else logp_ref[j],
            }
        )
    return pa.Table.from_pylist(rows)


def _write_parquet(table, dest: Path) -> None:
    import pyarrow.parquet as pq

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, dest)


def baseline(run: Path, cfg: LoopConfig, held: list[dict]) -> dict:
    """The initial policy's held-out samples, scored by the evaluator (once per run)."""
    import pyarrow.parquet as pq

    from labelers.rm_labeler import cached_scorer

    dest = run / "baseline" / "eval.parquet"
    if dest.is_file():
        return {"rows": pq.read_table(dest).to_pylist(), "skipped": True}
    t0 = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    samples = sample(policy_backend(cfg.policy, cfg.gen_batch_size), held, cfg.eval_samples, cfg.max_new_tokens, cfg.sampling_temperature, cfg.seed + 10_000)
    ev = cached_scorer(cfg.evaluator)
    rewards = ev.score([scorer_prompt(x["messages"]) for x in samples], [x["response"] for x in samples])
    _write_parquet(_eval_table(samples, rewards), dest)
    _atomic_json(run / "baseline" / "info.json", {"seconds": round(time.perf_counter() - t0, 2), "n": len(samples)})
    return {"rows": pq.read_table(dest).to_pylist(), "skipped": False}


def logistic_fit(x: list[float], y: list[float], l2: float = 1e-3, iters: int = 30) -> tuple[float, float]:
    """(theta0, theta1) of P(y=1) = sigmoid(theta0 + theta1 x) by Newton's method (y may be fractional)."""
    import numpy as np

    X = np.column_stack([np.ones(len(x)), np.asarray(x, float)])
    Y = np.asarray(y, float)
    th = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ th)))
        g = X.T @ (p - Y) + l2 * th
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(2)
        th -= np.linalg.solve(H, g)
    return float(th[0]), float(th[1])


def win_stats(new: list[dict], base: list[dict], n_boot: int, seed: int) -> dict:
    """Win rate of new over base (same prompt and sample index; ties count 1/2), its length-controlled version, CIs by prompt bootstrap.

    Length control (after AlpacaEval's): win ~ sigmoid(theta0 + theta1 tanh(dlen / sd)), dlen the token-length
    difference new - base; the length-controlled win rate is sigmoid(theta0), the win rate at equal length.
    """
    b = {(r["prompt_id"], r["sample_index"]): r for r in base}
    pairs = [(r, b[(r["prompt_id"], r["sample_index"])]) for r in new if (r["prompt_id"], r["sample_index"]) in b]
    if not pairs:
        raise InputError("no held-out sample of the new policy matches one of the initial policy's; delete RUN/baseline and re-run")
    wins = [1.0 if n["reward"] > o["reward"] else (0.5 if n["reward"] == o["reward"] else 0.0) for n, o in pairs]
    dlen = [n["tokens"] - o["tokens"] for n, o in pairs]
    sd = (sum(d * d for d in dlen) / len(dlen)) ** 0.5 or 1.0
    feat = [math.tanh(d / sd) for d in dlen]
    prompts = sorted({n["prompt_id"] for n, _ in pairs})
    by_prompt: dict[str, list[int]] = {}
    for j, (n, _) in enumerate(pairs):
        by_prompt.setdefault(n["prompt_id"], []).append(j)

    def lc(idx: list[int]) -> float:
        t0, _ = logistic_fit([feat[j] for j in idx], [wins[j] for j in idx])
        return 1 / (1 + math.exp(-t0))

    rng = random.Random(seed)
    boot_w, boot_lc = [], []
    for _ in range(n_boot):
        idx = [j for p in (rng.choice(prompts) for _ in prompts) for j in by_prompt[p]]
        boot_w.append(sum(wins[j] for j in idx) / len(idx))
        boot_lc.append(lc(idx))

    def ci(v: list[float]) -> list[float]:
        v = sorted(v)
        return [v[int(0.025 * (len(v) - 1))], v[math.ceil(0.975 * (len(v) - 1))]]

    return {
        "n": len(pairs),
        "n_prompts": len(prompts),
        "win_rate": sum(wins) / len(wins),
        "win_rate_ci": ci(boot_w),
        "lc_win_rate": lc(list(range(len(pairs)))),
        "lc_win_rate_ci": ci(boot_lc),
        "mean_tokens_new": sum(n["tokens"] for n, _ in pairs) / len(pairs),
        "mean_tokens_initial": sum(o["tokens"] for _, o in pairs) / len(pairs),
        "mean_reward_new": sum(n["reward"] for n, _ in pairs) / len(pairs),
        "mean_reward_initial": sum(o["reward"] for _, o in pairs) / len(pairs),
    }


def stage_eval(run: Path, cfg: LoopConfig, k: int, held: list[dict]) -> dict:
    """iter-k's policy vs the initial one on the held-out prompts, by the evaluator; KL(new || initial) estimated on the new samples."""
    from labelers.rm_labeler import cached_scorer

    t0 = time.perf_counter()
    base = baseline(run, cfg, held)["rows"]
    d = iter_dir(run, k)
    new = policy_backend(str(d / "policy"), cfg.gen_batch_size)
    samples = sample(new, held, cfg.eval_samples, cfg.max_new_tokens, cfg.sampling_temperature, cfg.seed + 10_000)
    logp_new = seq_logprob(new.model, samples, cfg.sampling_temperature)
    logp_ref = seq_logprob(policy_backend(cfg.policy, cfg.gen_batch_size).model, samples, cfg.sampling_temperature)
    ev = cached_scorer(cfg.evaluator)
    rewards = ev.score([scorer_prompt(x["messages"]) for x in samples], [x["response"] for x in samples])
    _write_parquet(_eval_table(samples, rewards, logp_ref, logp_new), d / "eval.parquet")
    stats = win_stats([r for r in _eval_table(samples, rewards).to_pylist()], base, cfg.n_boot, cfg.seed + k)
    kl = [a - b for a, b in zip(logp_new, logp_ref)]
    stats["kl_to_initial"] = sum(kl) / len(kl)
    stats["evaluator"] = str(Path(cfg.evaluator).resolve())
    return finish_stage(run, k, "eval", stats, time.perf_counter() - t0)


# the loop, without Prefect ---------------------------------------------------------
def run_stage(run: Path, k: int, stage: str, fn, *args) -> dict:
    done = stage_done(run, k, stage)
    if done is not None:
        log_event(run, {"iteration": k, "stage": stage, "event": "skipped"})
        return done
    log_event(run, {"iteration": k, "stage": stage, "event": "started"})
    info = fn(*args)
    log_event(run, {"iteration": k, "stage": stage, "event": "finished", "seconds": info.get("seconds")})
    return info
