"""``aifeedback doctor``: what a user needs to know about this machine before a long run.

Each check returns a :class:`Check` with a status: ``ok``, ``info`` (optional and
absent), ``warn`` (works, but something will be slow or an optional path is
broken) or ``fail`` (a stage that needs it will not run). The command exits
non-zero when any check fails.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import platform
import shutil
from dataclasses import asdict, dataclass

from .paths import cache_dir

# Features the code paths here care about, in the order they are printed.
CPU_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
MIN_FREE_GB = 2.0  # the converted policy is 0.5 GB; a run store of 100k labels is well under 1 GB


@dataclass(slots=True)
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def amx_permitted() -> bool | None:
    """Ask Linux for AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM). None where that cannot be asked.

    A CPU can list amx_tile while its kernel or hypervisor refuses the state; code built with AMX
    kernels (a native llama.cpp build on such a CPU) then dies on its first tile instruction.
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
        return libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):
        return None


def check_cpu() -> Check:
    flags = cpu_flags()
    have = [f for f in CPU_FEATURES if f in flags]
    detail = f"{platform.machine()}, {os.cpu_count()} cores; " + (" ".join(have) or "no AVX")
    if "amx_tile" in flags:
        permitted = amx_permitted()
        if permitted is False:
            return Check("cpu", "warn", detail + "; AMX listed but NOT permitted by the kernel: code built with AMX kernels crashes here (scripts/llama-wheel.sh builds without)")
        if permitted:
            detail += "; AMX listed and granted by arch_prctl; AMX kernels may still fault (a native llama.cpp build died at ldtilecfg on such a machine), so the tests' build has none"
    if "avx2" not in flags and platform.machine() == "x86_64":
        return Check("cpu", "warn", detail + "; no AVX2: the portable llama.cpp build (tests only) needs it")
    return Check("cpu", "ok", detail)


def check_torch() -> Check:
    try:
        torch = importlib.import_module("torch")
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return Check("torch", "fail", f"cannot import torch ({exc}); run `bash scripts/setup.sh demo`")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    cuda = torch.cuda.is_available() if torch.version.cuda else False
    mkl = "MKL" if torch.backends.mkl.is_available() else "no MKL"
    detail = f"{torch.__version__} ({build}, {mkl}), {torch.get_num_threads()} threads, CUDA device {'yes' if cuda else 'no'}"
    if torch.version.cuda and not cuda:
        return Check("torch", "warn", detail + "; a CUDA build without a GPU is several GB for nothing: pin torch==2.13.0 (constraints.txt)")
    return Check("torch", "ok", detail)


def check_cache() -> Check:
    path = cache_dir()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    writable = probe.is_dir() and os.access(probe, os.W_OK)
    detail = f"{path}: {free_gb:.1f} GB free" + ("" if writable else ", NOT writable")
    if not writable:
        return Check("cache", "fail", detail + "; set AIFEEDBACK_CACHE to a writable folder")
    if free_gb < MIN_FREE_GB:
        return Check("cache", "fail", detail + f"; under {MIN_FREE_GB:.0f} GB: free space or set AIFEEDBACK_CACHE elsewhere")
    return Check("cache", "ok", detail)


def _importable(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    return True, getattr(mod, "__version__", "")


def check_backends() -> list[Check]:
    out = []
    ok, ver = _importable("transformers")
    out.append(Check("backend transformers", "ok" if ok else "fail", f"transformers {ver} (the default backend)" if ok else f"cannot import transformers: {ver}"))
    ok, ver = _importable("httpx")
    out.append(Check("backend openai", "ok" if ok else "fail", f"httpx {ver}: any OpenAI-compatible endpoint" if ok else f"cannot import httpx: {ver}"))
    if importlib.util.find_spec("vllm") is None:
        out.append(Check("backend vllm", "info", "not installed (GPUs: pip install 'aifeedback[vllm]')"))
    else:
        ok, ver = _importable("vllm")
        out.append(Check("backend vllm", "ok" if ok else "warn", f"vllm {ver}" if ok else f"installed but does not import: {ver}"))
    return out


def check_llama_cpp() -> Check:
    """The tests' llama.cpp server. Optional for users; its build must match this CPU."""
    if importlib.util.find_spec("llama_cpp") is None:
        return Check("llama.cpp (tests)", "info", "not installed (`bash scripts/setup.sh test` builds it portably)")
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001
        return Check("llama.cpp (tests)", "warn", f"installed but does not load: {exc}")
    kernels = sorted({part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")})
    detail = f"llama-cpp-python {llama_cpp.__version__}; kernels: {' '.join(kernels) or info.strip()[:120]}"
    if any(k.startswith("AMX") for k in kernels):
        return Check("llama.cpp (tests)", "warn", detail + "; built with AMX kernels, which die with a general protection fault on machines that list AMX but do not run it (seen on this project's machines). Rebuild portably: bash scripts/setup.sh test")
    return Check("llama.cpp (tests)", "ok", detail)


def check_embedded_models() -> list[Check]:
    from . import models

    out = []
    for name, locate in (("policy/labeler", models.smollm2_gguf), ("reward backbone", models.minilm_dir)):
        try:
            path = locate()
        except Exception as exc:  # noqa: BLE001 - ModelNotFound names the install command
            out.append(Check(f"model {name}", "fail", str(exc)))
            continue
        detail = f"{path} (offline)"
        if locate is models.smollm2_gguf:
            converted = models.converted_smollm2_dir()
            detail += "; converted copy cached" if (converted / "aifeedback-source.json").is_file() else "; first use converts it once (about 40 s)"
        out.append(Check(f"model {name}", "ok", detail))
    return out


def check_prefect(timeout_s: float = 3.0) -> Check:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Check("prefect", "ok", "no PREFECT_API_URL: commands run in-process without Prefect (a shared server from `aifeedback server start`, or --prefect, runs them as Prefect flows)")
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        return Check("prefect", "fail", f"PREFECT_API_URL={url} is unreachable ({type(exc).__name__}: {exc}); start it with `prefect server start --host 127.0.0.1` or unset PREFECT_API_URL")
    return Check("prefect", "ok", f"PREFECT_API_URL={url} answers /health")


def check_ray() -> Check:
    if importlib.util.find_spec("ray") is None:
        return Check("ray", "info", "not installed (--runner ray: pip install 'aifeedback[ray]')")
    ok, ver = _importable("ray")
    ok2, ver2 = _importable("prefect_ray")
    if ok and ok2:
        return Check("ray", "ok", f"ray {ver}, prefect-ray {ver2}")
    return Check("ray", "warn", f"--runner ray will not work: {ver if not ok else ver2}")


def run_checks() -> list[Check]:
    checks = [check_cpu(), check_torch(), check_cache(), *check_backends(), check_llama_cpp(), *check_embedded_models(), check_prefect(), check_ray()]
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
