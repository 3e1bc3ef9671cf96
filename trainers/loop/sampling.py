"""Policy sampling for the loop: the prompt split, seeded samples from the transformers backend's batched decoder,
their sequence log-probabilities (the KL term), and the responses rows of an iteration's run store."""

from __future__ import annotations

import random

from aifeedback.errors import InputError

from .config import LoopConfig


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
            raise InputError(f"no column {cfg.prompt_column!r} in {cfg.prompts} (row {n}). Available columns: {sorted(row)}. Set `prompt_column`.")
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


def policy_backend(model_id: str, batch_size: int | None):
    """The transformers backend on a policy (the embedded model or a checkpoint folder): its batched decoder samples,
    on a GPU when present, in the backend's default dtype (bfloat16 on a GPU with bf16 units, else float32)."""
    from aifeedback.backends.transformers import TransformersBackend
    from aifeedback.config import TransformersBackendConfig

    return TransformersBackend(TransformersBackendConfig(model=model_id, **({"gen_batch_size": batch_size} if batch_size else {})))


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
        dev = model.device  # the policy is on the GPU when one is present; the batch goes there, the sums come back
        rows_t = torch.tensor(rows)
        with torch.inference_mode():
            hidden = model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
            h = hidden[rows_t.to(dev), torch.tensor(cols, device=dev)].float()  # the output layer in fp32, also for a bf16 policy
            logits = torch.nn.functional.linear(h, head.weight.float(), None if head.bias is None else head.bias.float()) / temperature
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets, device=dev)[:, None]).squeeze(-1).cpu()
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows_t, lp.double())
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
