"""Distilled RLAIF: a reward model trained with cross-entropy on the AI labeler's soft labels.

r(prompt, response) is a sequence-classification model with one output. For a
pair with soft label p = P(A > B) the loss is BCE(sigmoid(r_A - r_B), p); the
hard-label baseline uses -log sigmoid(r_winner - r_loser - margin).

Against length bias (a labeler that prefers longer answers teaches the RM to count
tokens): ``length_head`` adds ODIN's second output, trained jointly so that the
pairwise loss sees r_quality + r_length while |corr(r_quality, log length)| is
penalised and corr(r_length, log length) rewarded; only output 0 (quality) is the
reward afterwards. ``length_balance`` weights pairs so that longer-won and
shorter-won pairs count equally; ``early_stopping`` keeps the best epoch on a gold
slice with human labels. ``length_control="residual"`` changes the targets instead
of the model: :func:`fit_length_effect` fits the judge's length effect on the soft
labels (AlpacaEval's length-controlled regression) and :func:`residual_targets`
removes it before training.

``checkpoint_every`` saves the whole training state (weights, optimiser, this epoch's
order and position, RNG states, losses, gold curve, best epoch) every N steps and at
each epoch's end, atomically, to ``checkpoint_dir``; the same training rerun resumes
there and ends at the weights an uninterrupted run reaches. A checkpoint written for
other pairs or another config is refused, never silently reused.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from aifeedback.errors import InputError
from aifeedback.preference import select, winner
from labelers.rm_labeler import align_padding, sigmoid

from .checkpoint import Checkpoint, fingerprint
from .reward_config import RewardConfig


def soft_bt_loss(r_a, r_b, p_a, weight=None):
    """BCE(sigmoid(r_A - r_B), p(A > B)), averaged over the batch (weighted when ``weight`` is given)."""
    import torch.nn.functional as F

    if weight is None:
        return F.binary_cross_entropy_with_logits(r_a - r_b, p_a)
    return (F.binary_cross_entropy_with_logits(r_a - r_b, p_a, reduction="none") * weight).sum() / weight.sum()


def hard_bt_loss(r_w, r_l, margin: float = 0.0, weight=None):
    import torch.nn.functional as F

    loss = -F.logsigmoid(r_w - r_l - margin)
    return loss.mean() if weight is None else (loss * weight).sum() / weight.sum()


def pearson(x, y):
    """Pearson correlation of two 1-d tensors (0 when either is constant)."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.norm() * yc.norm() + 1e-8)


def longer_side(row: dict) -> str | None:
    a, b = len(row["response_a"]), len(row["response_b"])
    return None if a == b else ("A" if a > b else "B")


def balance_weights(rows: list[dict]) -> list[float]:
    """Per-pair weights under which pairs won by the longer response and by the shorter one weigh the same in total.

    A pair's side is its soft label's (p_a > 0.5: A); ties and equal lengths weigh 1.
    """
    side = []
    for r in rows:
        p, lng = float(r["p_a"]), longer_side(r)
        side.append(None if lng is None or p == 0.5 else ("longer" if (p > 0.5) == (lng == "A") else "shorter"))
    n = {k: side.count(k) for k in ("longer", "shorter")}
    if not n["longer"] or not n["shorter"]:
        return [1.0] * len(rows)
    total = n["longer"] + n["shorter"]
    return [1.0 if s is None else total / (2 * n[s]) for s in side]


LENGTH_MEASURE = "characters"  # len(response), as AlpacaEval's `str.len()`: no tokenizer, so beta1 and s compare across backbones


def length_delta(row: dict) -> int:
    return len(row["response_a"]) - len(row["response_b"])


def judge_logit(p: float, eps: float) -> float:
    """log(p / (1 - p)), the judge's log-odds that A is better; p is clipped to [eps, 1 - eps] first
    (``RewardConfig.length_control_eps``: a label of 0 or 1 counts as log-odds of -log((1 - eps) / eps) or +)."""
    p = min(max(float(p), eps), 1 - eps)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class LengthFit:
    """The judge's length effect: logit p(A>B) = beta1 * tanh(delta / scale) + the rest, delta = len(A) - len(B) in characters."""

    beta1: float
    scale: float
    n_pairs: int
    eps: float  # the judge's p clipped to [eps, 1 - eps] before its log-odds, in the fit and in the residual

    def term(self, row: dict) -> float:
        return self.beta1 * math.tanh(length_delta(row) / self.scale) if self.scale else 0.0

    def as_dict(self) -> dict:
        return {
            "method": "residual",
            "model": "logit p(A>B) = beta1 * tanh((len(response_a) - len(response_b)) / scale) + rest; least squares on the judge's log-odds, no intercept",
            "beta1": self.beta1,
            "scale": self.scale,
            "measure": LENGTH_MEASURE,
            "eps": self.eps,
            "n_pairs": self.n_pairs,
        }


def fit_length_effect(rows: list[dict], eps: float = 0.01) -> LengthFit:
    """beta1 of logit p_a = beta1 * x + rest, x = tanh(delta / s), by least squares on the judge's log-odds.

    The feature is AlpacaEval's length-controlled one: delta in characters, squashed by tanh; s is the root mean
    square of delta (the standard deviation of the pairs together with their swaps). Least squares makes the
    residual log-odds uncorrelated with x, and it recovers the length effect when the rest (content) is independent
    of length. Maximum likelihood with the soft labels as targets (AlpacaEval's fit) does not: with content left out
    of the model its slope shrinks towards 0 (to about half of it at a content spread of 3 logits), and the
    residual would keep the rest of the length preference. There is no intercept: the order of A and B is a
    presentation choice, so the fit is odd in delta and swapping A and B in any pair (x -> -x, logit -> -logit)
    changes neither beta1 nor s. Content that correlates with length is counted as length.
    """
    if not rows:
        raise InputError("no pairs to fit the length effect on; label pairs first, or set length_control=none")
    deltas = [length_delta(r) for r in rows]
    scale = math.sqrt(sum(d * d for d in deltas) / len(deltas))
    if scale == 0:  # every pair has equal lengths: no length signal to remove
        return LengthFit(0.0, 0.0, len(rows), eps)
    xs = [math.tanh(d / scale) for d in deltas]
    beta1 = sum(judge_logit(r["p_a"], eps) * x for r, x in zip(rows, xs)) / sum(x * x for x in xs)
    return LengthFit(beta1, scale, len(rows), eps)


def residual_targets(rows: list[dict], fit: LengthFit) -> list[dict]:
    """Copies of ``rows`` whose p_a is sigmoid(logit p_a - fit.term(row)), the judge's preference at equal length;
    the judge's own label stays in p_a_judge."""
    out = []
    for r in rows:
        term = fit.term(r)
        out.append({**r, "p_a": sigmoid(judge_logit(r["p_a"], fit.eps) - term) if term else float(r["p_a"]), "p_a_judge": r["p_a"]})
    return out


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def winner_of(row: dict) -> str:
    """The row's hard label (aifeedback.preference.winner, as export and DPO see it)."""
    return row.get("hard_label") or winner(row["p_a"], 0.0)


def select_pairs(rows: list[dict], cfg: RewardConfig) -> tuple[list[dict], dict]:
    """The training pairs: aifeedback.preference.select, then hard mode drops ties (soft labels keep them). Returns (kept, dropped by reason)."""
    kept, dropped = select(rows, cfg.min_confidence, cfg.consistency)
    if cfg.labels == "hard":
        decided = [r for r in kept if winner_of(r) != "tie"]
        dropped["tie"] = len(kept) - len(decided)
        kept = decided
    return kept, dropped


@dataclass
class RewardResult:
    losses: list[float] = field(default_factory=list)
    eval_accuracy: float | None = None
    n_train: int = 0
    n_eval: int = 0
    dropped: dict = field(default_factory=dict)
    seconds: float = 0.0
    gold_curve: list[float] = field(default_factory=list)  # early_stopping: gold accuracy after each epoch
    best_epoch: int | None = None
    length_control: dict | None = None  # length_control=residual: the fitted LengthFit.as_dict()
    resumed_from_step: int | None = None  # checkpoint_every: the step a checkpoint resumed training from


class RewardTrainer:
    def __init__(self, cfg: RewardConfig, model=None, tokenizer=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        self.checkpoint: Checkpoint | None = None  # train() with checkpoint_every sets it; save() removes it
        torch.manual_seed(cfg.seed)
        if model is None:
            from aifeedback.models import resolve

            path = resolve(cfg.backbone).path
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2 if cfg.length_head else 1)
        # a GPU when present, in bf16 autocast (fp32 weights); the losses are computed on CPU from the returned rewards
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.amp = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.model, self.tok = model.to(self.device), tokenizer
        align_padding(self.model, self.tok)

    def outputs(self, prompts: list[str], responses: list[str]):
        """All heads: shape (n, 1), or (n, 2) with the ODIN length head (column 0 is quality)."""
        import torch

        enc = self.tok(prompts, responses, truncation="longest_first", max_length=self.cfg.max_length, padding=True, return_tensors="pt").to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(**enc).logits.float().cpu()  # differentiable: gradients flow back to the device

    def rewards(self, prompts: list[str], responses: list[str]):
        """The reward: the quality head (output 0)."""
        return self.outputs(prompts, responses)[:, 0]

    def _log_lengths(self, responses: list[str]):
        import torch

        return torch.tensor([math.log1p(len(ids)) for ids in self.tok(responses, add_special_tokens=False)["input_ids"]], dtype=torch.float32)

    def _batch_loss(self, batch: list[dict], weight):
        import torch

        cfg = self.cfg
        prompts = [prompt_text(r["messages"]) for r in batch]
        out_a = self.outputs(prompts, [r["response_a"] for r in batch])
        out_b = self.outputs(prompts, [r["response_b"] for r in batch])
        odin = cfg.length_head and out_a.shape[-1] > 1
        r_a, r_b = (out_a[:, 0] + out_a[:, 1], out_b[:, 0] + out_b[:, 1]) if odin else (out_a[:, 0], out_b[:, 0])
        if cfg.labels == "soft":
            loss = soft_bt_loss(r_a, r_b, torch.tensor([float(r["p_a"]) for r in batch]), weight)
        else:
            a_wins = torch.tensor([winner_of(r) == "A" for r in batch])  # hard label: the one definition
            loss = hard_bt_loss(torch.where(a_wins, r_a, r_b), torch.where(a_wins, r_b, r_a), cfg.margin, weight)
        if odin and len(batch) > 1:
            lengths = torch.cat([self._log_lengths([r["response_a"] for r in batch]), self._log_lengths([r["response_b"] for r in batch])])
            q, ln = torch.cat([out_a[:, 0], out_b[:, 0]]), torch.cat([out_a[:, 1], out_b[:, 1]])
            loss = loss + cfg.length_weight * (pearson(q, lengths).abs() - pearson(ln, lengths))
        return loss

    def train(self, rows: list[dict], eval_rows: list[dict] | None = None, gold_rows: list[dict] | None = None, checkpoint_dir: str | Path | None = None) -> RewardResult:
        """Train on ``rows``; ``eval_rows`` (human labels) give the held-out accuracy, ``gold_rows`` pick the epoch with ``early_stopping``.

        ``checkpoint_dir`` with ``checkpoint_every``: the training state is saved there, and a
        checkpoint already there (from the same pairs and config) is resumed.
        """
        import copy

        import torch

        cfg = self.cfg
        kept, dropped = select_pairs(rows, cfg)
        if not kept:
            raise InputError(f"no training pairs left after filtering ({dropped}); lower min_confidence or keep inconsistent pairs (consistency=any)")
        if cfg.early_stopping and not [r for r in gold_rows or [] if r.get("human") in ("A", "B")]:
            raise InputError("early_stopping needs gold rows with a human label A or B (pass gold_rows), or set early_stopping=false")
        res = RewardResult(n_train=len(kept), dropped=dropped)
        if cfg.length_control == "residual":
            fit = fit_length_effect(kept, cfg.length_control_eps)
            kept, res.length_control = residual_targets(kept, fit), fit.as_dict()
        weights = balance_weights(kept) if cfg.length_balance else None
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)
        rng = random.Random(cfg.seed)
        ckpt = Checkpoint(Path(checkpoint_dir), fingerprint(cfg, kept, gold_rows)) if checkpoint_dir is not None and cfg.checkpoint_every else None
        self.checkpoint = ckpt
        step, start_epoch, order, offset, best, spent = 0, 0, None, 0, (-1.0, None, 0), 0.0
        saved = ckpt.load() if ckpt else None
        if saved:
            self.model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            rng.setstate(saved["py_rng"])
            torch.set_rng_state(saved["torch_rng"])
            step, start_epoch, order, offset, spent = saved["step"], saved["epoch"], saved["order"], saved["offset"], saved["seconds"]
            best = (saved["best_acc"], saved["best_model"], saved["best_epoch"])
            res.losses, res.gold_curve, res.resumed_from_step = list(saved["losses"]), list(saved["gold_curve"]), step

        def save_state(epoch: int, order: list[int] | None, offset: int) -> None:
            ckpt.save({
                "step": step, "epoch": epoch, "order": order, "offset": offset, "seconds": spent + time.perf_counter() - t0,
                "model": self.model.state_dict(), "opt": opt.state_dict(), "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                "losses": res.losses, "gold_curve": res.gold_curve, "best_acc": best[0], "best_model": best[1], "best_epoch": best[2],
            })

        t0 = time.perf_counter()
        self.model.train()
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps and step >= cfg.max_steps:
                break
            if order is None:  # a new epoch (a resumed one keeps its order and position)
                order = list(range(len(kept)))
                rng.shuffle(order)
                offset = 0
            for s in range(offset, len(order), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                w = torch.tensor([weights[i] for i in idx]) if weights else None
                loss = self._batch_loss([kept[i] for i in idx], w)
                opt.zero_grad()
                loss.backward()
                opt.step()
                res.losses.append(float(loss.detach()))
                step += 1
                if cfg.max_steps and step >= cfg.max_steps:
                    break
                if ckpt and step % cfg.checkpoint_every == 0 and s + cfg.batch_size < len(order):
                    save_state(epoch, order, s + cfg.batch_size)
            order = None
            if cfg.early_stopping:
                acc = self.accuracy(gold_rows)
                res.gold_curve.append(acc)
                if acc > best[0]:
                    best = (acc, copy.deepcopy(self.model.state_dict()), epoch + 1)
            if ckpt and not (cfg.max_steps and step >= cfg.max_steps):
                save_state(epoch + 1, None, 0)
        if cfg.early_stopping and best[1] is not None:
            self.model.load_state_dict(best[1])
            res.best_epoch = best[2]
        res.seconds = spent + time.perf_counter() - t0
        if eval_rows:
            res.eval_accuracy, res.n_eval = self.accuracy(eval_rows), len([r for r in eval_rows if r.get("human") in ("A", "B")])
        return res

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def pair_rewards(self, rows: list[dict]) -> tuple[list[float], list[float]]:
        """(rewards of response_a, rewards of response_b) of each row, in batches of 32."""
        import torch

        self.model.eval()
        r_a: list[float] = []
        r_b: list[float] = []
        with torch.no_grad():
            for s in range(0, len(rows), 32):
                batch = rows[s : s + 32]
                prompts = [prompt_text(r["messages"]) for r in batch]
                r_a += self.rewards(prompts, [r["response_a"] for r in batch]).tolist()
                r_b += self.rewards(prompts, [r["response_b"] for r in batch]).tolist()
        self.model.train()
        return r_a, r_b

    def accuracy(self, rows: list[dict]) -> float:
        """Held-out accuracy against human labels: the pair's human winner gets the higher reward."""
        rows = [r for r in rows if r.get("human") in ("A", "B")]
        if not rows:
            return math.nan
        r_a, r_b = self.pair_rewards(rows)
        return sum((a > b) == (r["human"] == "A") for r, a, b in zip(rows, r_a, r_b)) / len(rows)

    def save(self, out_dir: str | Path, result: RewardResult, provenance: dict | None = None) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tok.save_pretrained(out)
        if self.checkpoint:
            self.checkpoint.remove()  # the model is saved: its training state is no longer needed
        (out / "aifeedback_reward_config.json").write_text(self.cfg.model_dump_json(indent=2))  # labelers.rm_labeler reads length_head from it
        if result.length_control:
            (out / "aifeedback_length_control.json").write_text(json.dumps(result.length_control, indent=2))
        card = [
            "---",
            "library_name: transformers",
            "tags: [reward-model, rlaif, aifeedback]",
            "---",
            f"# Reward model (distilled RLAIF, {self.cfg.labels} labels)",
            "",
            f"- backbone: `{self.cfg.backbone}`",
            f"- reward: output 0 of {self.model.config.num_labels}" + (" (ODIN: output 1 is the length head, dropped at inference)" if self.cfg.length_head else ""),
            f"- loss: {'BCE(sigmoid(r_A - r_B), p(A>B)) on AI soft labels' if self.cfg.labels == 'soft' else f'-log sigmoid(r_w - r_l - {self.cfg.margin}) on hard labels'}",
            f"- training pairs: {result.n_train} (dropped: {result.dropped})",
            f"- held-out human-label accuracy: {result.eval_accuracy if result.eval_accuracy is not None else 'n/a'} on {result.n_eval} pairs",
            f"- final training loss: {result.losses[-1]:.4f} after {len(result.losses)} steps" if result.losses else "",
            f"- resumed from a checkpoint at step {result.resumed_from_step}" if result.resumed_from_step is not None else "",
            f"- length control: targets with the judge's length effect removed, beta1 = {result.length_control['beta1']:.4f} on tanh(delta chars / {result.length_control['scale']:.1f}) (aifeedback_length_control.json)" if result.length_control else "",
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

