"""A trained reward model as a labeler: ``aifeedback label --labeler rm:PATH`` and the loop's RM labeler.

Each pair is scored once per response; the stored outputs are P(A better) =
sigmoid(r_A - r_B) for both orders, so the label is position-free by construction
(``prob_source`` "reward_model:position_free", p_ab == p_ba). The calibration
temperature T is applied on read like any labeler's (aifeedback/preference.py), so
the soft label is sigmoid((r_A - r_B) / T); :func:`fit_rm_temperature` fits T on a
gold slice with the existing temperature scaling (labelers.metrics.fit_temperature).

Loads a folder saved by ``aifeedback train-rm`` (or any one-output
sequence-classification model) with transformers; it does not import trainers.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aifeedback.errors import InputError
from aifeedback.preference import Derivation
from aifeedback.records import LABEL_OUTPUTS, stable_id

PROB_SOURCE = "reward_model:position_free"
MODE = "rm"
_SCORERS: dict[str, RewardModelScorer] = {}
_LOCK = threading.Lock()


def prompt_text(messages: list[dict]) -> str:
    """The reward model's first segment: the conversation without system turns (as trainers.reward_trainer trains it)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def check_reward_model_dir(path: str | Path) -> dict:
    """The folder's config.json, or an InputError naming what is wrong and how to get a reward model."""
    p = Path(path)
    fix = "pass the folder written by `aifeedback train-rm --out DIR` (a sequence-classification model with one reward output)"
    if not p.is_dir():
        raise InputError(f"reward model folder {p} does not exist; {fix}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{p} is not a reward model: it has no config.json; {fix}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise InputError(f"{p} is not a reward model: config.json is not JSON ({exc}); {fix}") from None
    archs = cfg.get("architectures") or []
    n_labels = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2)
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise InputError(f"{p} is not a reward model: its architecture is {archs or 'unknown'}, not a *ForSequenceClassification; {fix}")
    head = _head_config(p)
    if n_labels != 1 and not (head.get("length_head") and n_labels == 2):
        raise InputError(f"{p} is not a reward model: its classifier has {n_labels} outputs, a reward model has 1 (or 2 with an ODIN length head recorded in aifeedback_reward_config.json); {fix}")
    if not any((p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise InputError(f"{p} is not a reward model: it has no weights (model.safetensors); {fix}")
    return cfg


def _head_config(p: Path) -> dict:
    f = p / "aifeedback_reward_config.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        return {}


def align_padding(model, tok) -> None:
    """Pad on the right with a pad id the model knows. A decoder backbone (Llama, SmolLM2) reads the reward at the
    rightmost token that is not its config's pad_token_id, so that id must be the tokenizer's pad (a tokenizer
    without one pads with its end-of-sequence token); right padding keeps every real token at the position it
    has when scored alone, for absolute position embeddings (BERT) too."""
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise InputError(f"the tokenizer of {model.config.name_or_path or 'the backbone'} has neither a pad nor an end-of-sequence token; set pad_token in its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model.config.pad_token_id = tok.pad_token_id


class RewardModelScorer:
    """r(prompt, response) from a saved reward model: output 0 (the quality head when ODIN's length head is present).

    It runs on a GPU when one is present (``device`` "auto"), in float32 (as trained and saved), with larger
    batches there; pairs are scored in batches sorted by length, so little of a batch is padding."""

    def __init__(self, path: str | Path, max_length: int | None = None, batch_size: int | None = None, device: str = "auto"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_reward_model_dir(path)
        self.path = str(Path(path).resolve())
        head = _head_config(Path(path))
        self.max_length = max_length or int(head.get("max_length") or 256)
        self.device = torch.device(scorer_device() if device == "auto" else device)
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 32)
        self.length_head = bool(head.get("length_head"))
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        align_padding(self.model, self.tok)
        self._torch = torch
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"rm:{self.path}"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out: list[float] = [0.0] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
        with self._lock, self._torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tok([prompts[i] for i in idx], [responses[i] for i in idx], truncation="longest_first", max_length=self.max_length, padding=True, return_tensors="pt")
                for i, r in zip(idx, self.model(**enc.to(self.device)).logits[:, 0].float().tolist()):
                    out[i] = r
        return out

    def pair_rewards(self, pairs: list[dict]) -> tuple[list[float], list[float]]:
        """(r_A, r_B) per pair, scoring each distinct (prompt, response) once: with n responses to a prompt,
        each is in n - 1 pairs (the loop labels every pair of 4)."""
        keys = []
        for p in pairs:
            prompt = prompt_text(p["messages"])
            keys.append(((prompt, p["response_a"]), (prompt, p["response_b"])))
        uniq = list(dict.fromkeys(k for ab in keys for k in ab))
        r = dict(zip(uniq, self.score([k[0] for k in uniq], [k[1] for k in uniq])))
        return [r[a] for a, _ in keys], [r[b] for _, b in keys]


def scorer_device() -> str:
    """Where a reward model scores ("auto"): cuda when present, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cached_scorer(path: str | Path, max_length: int | None = None) -> RewardModelScorer:
    key = f"{Path(path).resolve()}|{max_length}"
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = RewardModelScorer(path, max_length)
        return _SCORERS[key]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def rm_label_outputs(pair: dict, r_a: float, r_b: float) -> dict:
    """The stored outputs of one RM label: the same P(A better) in both orders (position-free)."""
    p = sigmoid(r_a - r_b)
    return {
        "mode": MODE,
        "option_probs": [{"order": "AB", "principle_id": None, "probs": [p, 1 - p]}, {"order": "BA", "principle_id": None, "probs": [1 - p, p]}],
        "candidates": ["1", "2"],
        "orders": ["AB", "BA"],
        "principle_ids": [],
        "rationale": None,
        "prob_source": PROB_SOURCE,
        "retries": 0,
        "injection_flags": [],
        "truncated": False,
        "raw": json.dumps({"r_a": r_a, "r_b": r_b}),
    }


@dataclass
class RMLabelJob:
    """The label stage's job with a reward model in place of an LLM judge (same rows, same store)."""

    model_dir: str
    temperature: float = 1.0
    tie_margin: float = 0.05
    seed: int = 0
    max_length: int | None = None
    stage: str = "labels"
    schema = LABEL_OUTPUTS
    _version: str = field(init=False, default="")

    def __post_init__(self):
        check_reward_model_dir(self.model_dir)
        p = Path(self.model_dir)
        blob = (p / "config.json").read_text() + "".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(p.glob("*.safetensors")))
        self._version = stable_id(blob)

    def item_id(self, item: dict) -> str:
        return item["pair_id"]

    def key_config(self) -> dict:
        # a GPU's kernels differ from the CPU's in the last bits: its labels are other outputs (CPU keys stay as they were)
        dev = scorer_device()
        return {"labeler": "reward_model", "model_dir": str(Path(self.model_dir).resolve()), "weights": self._version, "max_length": self.max_length, **({"device": dev} if dev != "cpu" else {})}

    def derivation(self) -> Derivation:
        return Derivation(tie_margin=self.tie_margin, temperature=self.temperature)

    def model_id(self) -> str:
        return f"rm:{Path(self.model_dir).resolve()}"

    def template_version(self) -> str:
        return f"reward-model@{self._version}"

    def manifest_info(self) -> dict:
        return {"labeler": "reward_model", "reward_model": str(Path(self.model_dir).resolve()), "prob_source": PROB_SOURCE, "device": scorer_device()}

    def compute(self, items: list[dict], key: str) -> tuple[list[dict], list[dict], dict]:
        import time

        from aifeedback.config import config_hash
        from aifeedback.records import split_labelable

        scorer = cached_scorer(self.model_dir, self.max_length)
        good, excluded = split_labelable(items, "labels", key)
        t0 = time.perf_counter()
        r_a, r_b = scorer.pair_rewards(good) if good else ([], [])
        secs = time.perf_counter() - t0
        chash = config_hash(self.key_config())
        rows = []
        for it, a, b in zip(good, r_a, r_b):
            rows.append(
                {
                    "pair_id": it["pair_id"],
                    "prompt_id": it["prompt_id"],
                    "messages": it["messages"],
                    "response_a": it["response_a"],
                    "response_b": it["response_b"],
                    **rm_label_outputs(it, a, b),
                    "labeler_model": self.model_id(),
                    "backend": "reward_model",
                    "template": "reward-model",
                    "template_version": self.template_version(),
                    "constitution_id": None,
                    "constitution_version": None,
                    "seed": self.seed,
                    "config_hash": chash,
                    "batch_key": key,
                    "__item__": it["pair_id"],
                }
            )
        return rows, excluded, {"model_calls": 2 * len(good), "retries": 0, "model_s": secs}


def fit_rm_temperature(scorer: RewardModelScorer, gold: list[dict]) -> dict:
    """T for sigmoid((r_A - r_B)/T), fitted on gold pairs with a human label A/B by labelers.metrics.fit_temperature."""
    from .metrics import fit_temperature

    gold = [g for g in gold if g.get("human") in ("A", "B") and isinstance(g.get("response_a"), str) and isinstance(g.get("response_b"), str)]
    if not gold:
        raise InputError("no gold pairs with a human label A or B to fit the reward model's temperature; pass a gold file with human labels")
    r_a, r_b = scorer.pair_rewards(gold)
    probs = [sigmoid(a - b) for a, b in zip(r_a, r_b)]
    outcomes = [1 if g["human"] == "A" else 0 for g in gold]
    t = fit_temperature(probs, outcomes)
    acc = sum((p > 0.5) == (y == 1) for p, y in zip(probs, outcomes)) / len(gold)
    return {"temperature": t, "n_gold": len(gold), "gold_accuracy": acc}


def read_gold(path: str | Path) -> list[dict]:
    """Gold pairs for the temperature: rows with messages (or prompt), response_a, response_b and a human label A/B."""
    from aifeedback.io import iter_rows, to_messages

    from .human_data import normalise_verdict

    out = []
    for row in iter_rows(path):
        if isinstance(row, tuple):
            continue
        msgs = row.get("messages") or to_messages(row.get("prompt"))[0]
        h = normalise_verdict(row.get("human"))
        if msgs and h in ("A", "B") and isinstance(row.get("response_a"), str) and isinstance(row.get("response_b"), str):
            out.append({"messages": msgs, "response_a": row["response_a"], "response_b": row["response_b"], "human": h})
    if not out:
        raise InputError(f"gold file {path} has no rows with messages (or prompt), response_a, response_b and human A/B; write one with `aifeedback import-pairs`")
    return out


def rm_label_job(labeler: str, cfg, gold: str | None = None) -> RMLabelJob:
    """The label stage's RM job for ``--labeler rm:PATH`` and a LabelConfig (tie margin, seed; temperature unless gold is given)."""
    if not labeler.startswith("rm:") or len(labeler) <= 3:
        raise InputError(f"`labeler` must be llm or rm:PATH (a reward model folder), got {labeler!r}")
    path = labeler[3:]
    t = fit_rm_temperature(cached_scorer(path), read_gold(gold))["temperature"] if gold else cfg.temperature
    return RMLabelJob(path, temperature=t, tie_margin=cfg.tie_margin, seed=cfg.seed)
