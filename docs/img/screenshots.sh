#!/usr/bin/env bash
# The README's screenshots, from a demo run, at a laptop width (1366 px), in headless Chromium.
#   bash docs/img/screenshots.sh [RUN_DIR]      # default runs/demo (after `make demo`)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=$(realpath "${1:-runs/demo}")
OUT=${OUT:-docs/img}
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
shot() {  # URL FILE HEIGHT
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$PROFILE" --hide-scrollbars \
    --window-size=1366,"$3" --virtual-time-budget=5000 --screenshot="$2" "$1" 2>/dev/null
}
shot "file://$RUN/gold/agreement/report.html" "$OUT/report.png" 2400
shot "file://$RUN/gold/view.html#sort=dis-desc" "$OUT/viewer-pairs.png" 1100
shot "file://$RUN/view.html#tab=chains" "$OUT/viewer-chains.png" 1100
ls -la "$OUT"/*.png
