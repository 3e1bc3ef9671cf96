#!/usr/bin/env bash
# Build (once) and print the path of a portable llama-cpp-python wheel.
#
# llama-cpp-python has no binary wheel on PyPI, and its default build is native:
# a wheel compiled on an AMX Xeon executes `ldtilecfg` and dies with a general
# protection fault on any machine that does not grant AMX tile use, and pip's
# cache then carries that wheel to every later install. So the wheel is built
# for a baseline x86-64 CPU (AVX2/FMA/F16C, no AVX-512, no AMX, no native
# detection), with pip's cache off, into a project-owned folder whose name is a
# hash of the version, the flags and the compiler: a wheel built with other
# flags can never be picked up.
set -euo pipefail
PY=$(realpath -s "${1:?usage: llama-wheel.sh PYTHON}")  # absolute (symlinks kept: a venv's python stays the venv's)
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
FLAGS=${LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"}
cache=${AIFEEDBACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aifeedback}
key=$( { echo "$VERSION"; echo "$FLAGS"; "$PY" -c 'import sys; print(sys.implementation.cache_tag)'; gcc --version | head -1; uname -m; } | sha256sum | cut -c1-16)
dir="$cache/wheels/llama-cpp-python-$VERSION-$key"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir.tmp.XXXX")
  trap 'rm -rf "$tmp"' EXIT  # a failed or interrupted build leaves nothing behind
  echo "building llama-cpp-python $VERSION for a baseline x86-64 CPU (4-9 min on 2 cores, once per flag set)" >&2
  echo "  flags: $FLAGS" >&2
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PY" -m pip wheel --no-deps --no-cache-dir --progress-bar off -q -w "$tmp" "llama-cpp-python==$VERSION" >&2
  # Refuse a wheel that still carries AMX or AVX-512 code (the crash this guards against).
  if command -v objdump >/dev/null 2>&1; then
    x=$(mktemp -d); "$PY" -m zipfile -e "$tmp"/*.whl "$x"
    n=$(find "$x" -name 'libggml*.so*' -exec objdump -d {} \; | grep -cE '\b(ldtilecfg|tdpb[a-z]*)\b|%zmm' || true)
    if [[ "$n" -gt 0 ]]; then
      rm -rf "$x" "$tmp"; echo "llama-cpp-python wheel still contains AMX/AVX-512 instructions; check LLAMA_CMAKE_ARGS" >&2; exit 1
    fi
    rm -rf "$x"
  fi
  mv "$tmp"/*.whl "$dir"/ && rmdir "$tmp"
  echo "$FLAGS" > "$dir/FLAGS"
fi
echo "$dir"
