#!/usr/bin/env bash
# System packages the tests need: Debian's chromium for the viewer's browser test (tests/test_viewer.py).
# Installs it as root (CI); anywhere else a missing chromium is an error that says how to install it,
# so the browser test never skips unnoticed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
fail() {
  echo "scripts/system-deps.sh: $*" >&2
  exit 1
}
if [[ $EUID -ne 0 ]]; then
  fail "chromium is missing and this is not root, so it cannot be installed here; the viewer's browser test (tests/test_viewer.py) needs it.
Install it with: sudo apt-get install chromium   (or run this script as root: sudo bash scripts/system-deps.sh)"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  fail "chromium is missing and there is no apt-get to install it; install chromium with this system's package manager (the command must be named chromium, on PATH)"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || fail "apt-get update failed (output above); fix the package sources, then run: apt-get install chromium"
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null || fail "apt-get install chromium failed (output above)"
command -v chromium >/dev/null 2>&1 || fail "apt-get installed chromium, but there is no chromium command on PATH ($PATH)"
