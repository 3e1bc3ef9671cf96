"""Distilled RLAIF: a reward model trained with cross-entropy on the AI labeler's soft labels.

r(prompt, response) is a sequence-classification model with one output. For a
pair with soft label p = P(A > B) the loss is BCE(sigmoid(r_A - r_B), p); the
hard-label baseline uses -log sigmoid(r_winner - r_loser - margin).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from aifeedback.errors import InputError
from aifeedback.preference import winner

from .reward_config import RewardConfig


def soft_bt_loss(r_a, r_b, p_a):
    """BCE(sigmoid(r_A - r_B), p(A > B)), averaged over the batch."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(r_a - r_b, p_a)


def hard_bt_loss(r_w, r_l, margin: float = 0.0):
    import torch.nn.functional as F

    return -F.logsigmoid(r_w - r_l - margin).mean()


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def winner_of(row: dict) -> str:
    """The row's hard label (aifeedback.preference.winner, as export and DPO see it)."""
    return row.get("hard_label") or winner(row["p_a"], 0.0)


def select_pairs(rows: list[dict], cfg: RewardConfig) -> tuple[list[dict], dict]:
    """Apply the confidence and consistency filters; hard mode drops ties. Returns (kept, counts)."""
    kept, dropped = [], {"low_confidence": 0, "inconsistent": 0, "tie": 0}
    for r in rows:
        if r.get("confidence") is not None and r["confidence"] < cfg.min_confidence:
            dropped["low_confidence"] += 1
        elif cfg.exclude_inconsistent and r.get("consistent") is False:
            dropped["inconsistent"] += 1
        elif cfg.labels == "hard" and winner_of(r) == "tie":
            dropped["tie"] += 1
        else:
            kept.append(r)
    return kept, dropped


@dataclass
class RewardResult:
    losses: list[float] = field(default_factory=list)
    eval_accuracy: float | None = None
    n_train: int = 0
    n_eval: int = 0
    dropped: dict = field(default_factory=dict)
    seconds: float = 0.0


class RewardTrainer:
    def __init__(self, cfg: RewardConfig, model=None, tokenizer=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if model is None:
            from aifeedback.models import resolve

            path = resolve(cfg.backbone).path
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.model, self.tok = model, tokenizer
        if self.model.config.pad_token_id is None and self.tok.pad_token_id is not None:
            self.model.config.pad_token_id = self.tok.pad_token_id

    def rewards(self, prompts: list[str], responses: list[str]):
        enc = self.tok(prompts, responses, truncation="longest_first", max_length=self.cfg.max_length, padding=True, return_tensors="pt")
        return self.model(**enc).logits.squeeze(-1)

    def train(self, rows: list[dict], eval_rows: list[dict] | None = None) -> RewardResult:
        import torch

        cfg = self.cfg
        kept, dropped = select_pairs(rows, cfg)
        if not kept:
            raise InputError(f"no training pairs left after filtering ({dropped}); lower min_confidence or keep inconsistent pairs (--set exclude_inconsistent=false)")
        res = RewardResult(n_train=len(kept), dropped=dropped)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        rng = random.Random(cfg.seed)
        t0 = time.perf_counter()
        self.model.train()
        step = 0
        for _ in range(cfg.epochs):
            order = list(range(len(kept)))
            rng.shuffle(order)
            for s in range(0, len(order), cfg.batch_size):
                batch = [kept[i] for i in order[s : s + cfg.batch_size]]
                prompts = [prompt_text(r["messages"]) for r in batch]
                r_a = self.rewards(prompts, [r["response_a"] for r in batch])
                r_b = self.rewards(prompts, [r["response_b"] for r in batch])
                if cfg.labels == "soft":
                    loss = soft_bt_loss(r_a, r_b, torch.tensor([float(r["p_a"]) for r in batch]))
                else:
                    a_wins = torch.tensor([winner_of(r) == "A" for r in batch])  # hard label: the one definition
                    loss = hard_bt_loss(torch.where(a_wins, r_a, r_b), torch.where(a_wins, r_b, r_a), cfg.margin)
                opt.zero_grad()
                loss.backward()
                opt.step()
                res.losses.append(float(loss))
                step += 1
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            if cfg.max_steps and step >= cfg.max_steps:
                break
        res.seconds = time.perf_counter() - t0
        if eval_rows:
            res.eval_accuracy, res.n_eval = self.accuracy(eval_rows), len([r for r in eval_rows if r.get("human") in ("A", "B")])
        return res

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def accuracy(self, rows: list[dict]) -> float:
        """Held-out accuracy against human labels: the pair's human winner gets the higher reward."""
        import torch

        rows = [r for r in rows if r.get("human") in ("A", "B")]
        if not rows:
            return math.nan
        self.model.eval()
        hits = 0
        with torch.no_grad():
            for s in range(0, len(rows), 32):
                batch = rows[s : s + 32]
                prompts = [prompt_text(r["messages"]) for r in batch]
                r_a = self.rewards(prompts, [r["response_a"] for r in batch])
                r_b = self.rewards(prompts, [r["response_b"] for r in batch])
                for r, a, b in zip(batch, r_a.tolist(), r_b.tolist()):
                    hits += (a > b) == (r["human"] == "A")
        self.model.train()
        return hits / len(rows)

    def save(self, out_dir: str | Path, result: RewardResult, provenance: dict | None = None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tok.save_pretrained(out)
        (out / "aifeedback_reward_config.json").write_text(self.cfg.model_dump_json(indent=2))
        card = [
            "---",
            "library_name: transformers",
            "tags: [reward-model, rlaif, aifeedback]",
            "---",
            f"# Reward model (distilled RLAIF, {self.cfg.labels} labels)",
            "",
            f"- backbone: `{self.cfg.backbone}`",
            f"- loss: {'BCE(sigmoid(r_A - r_B), p(A>B)) on AI soft labels' if self.cfg.labels == 'soft' else f'-log sigmoid(r_w - r_l - {self.cfg.margin}) on hard labels'}",
            f"- training pairs: {result.n_train} (dropped: {result.dropped})",
            f"- held-out human-label accuracy: {result.eval_accuracy if result.eval_accuracy is not None else 'n/a'} on {result.n_eval} pairs",
            f"- final training loss: {result.losses[-1]:.4f} after {len(result.losses)} steps" if result.losses else "",
            "",
            "## Training config",
            "```json",
            self.cfg.model_dump_json(indent=2),
            "```",
        ]
        if provenance:
            card += ["", "## Provenance", "```json", json.dumps(provenance, indent=2, default=str), "```"]
        (out / "README.md").write_text("\n".join(card) + "\n")
        return out
