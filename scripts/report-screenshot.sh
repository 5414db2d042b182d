#!/usr/bin/env bash
# Renders a simulation report page (`report.html`) to a PNG in headless
# Chromium, 1400 px wide:
#
#   scripts/report-screenshot.sh REPORT_HTML OUT_PNG [HEIGHT]
#
# Without HEIGHT, the page's own height is measured first (a copy of the
# page with a one-line script is loaded in Chromium) so that the whole page
# is captured; if that fails, 3200 px. If neither `chromium` nor
# `chromium-browser` is installed, installs Debian's `chromium` package with
# apt-get (through sudo unless root), or says what to do.
set -euo pipefail

usage() {
  echo "usage: $0 REPORT_HTML OUT_PNG [HEIGHT]" >&2
  exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage
HTML=$1
OUT=$2
HEIGHT=${3:-}
WIDTH=1400
DEFAULT_HEIGHT=3200
[ -f "$HTML" ] || { echo "error: no such file: $HTML" >&2; exit 2; }
if [ -n "$HEIGHT" ] && ! [[ "$HEIGHT" =~ ^[0-9]+$ ]]; then
  echo "error: HEIGHT must be a number of pixels, not '$HEIGHT'" >&2
  exit 2
fi

find_chromium() {
  local name
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

install_chromium() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "error: Chromium is not installed, and installing it needs root (no sudo here)." >&2
      echo "Install it yourself: apt-get install -y chromium" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: Chromium is not installed and there is no apt-get to install it." >&2
    echo "Install Chromium (or chromium-browser) and put it on the PATH." >&2
    return 1
  fi
  echo "Chromium is not installed; installing Debian's chromium package..." >&2
  if ! { "${sudo[@]}" apt-get update -q && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium; } >&2; then
    echo "error: could not install chromium with apt-get (see above)." >&2
    echo "Install it yourself: apt-get update && apt-get install -y chromium" >&2
    return 1
  fi
}

CHROMIUM=$(find_chromium) || { install_chromium && CHROMIUM=$(find_chromium); } || {
  echo "error: Chromium is still not on the PATH after installing it." >&2
  exit 1
}

# Bounded, when `timeout` is there: a stuck browser must not hang a test.
run() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 60 "$@"
  else
    "$@"
  fi
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
  --no-default-browser-check --disable-extensions --mute-audio
  --user-data-dir="$WORK/profile")

if [ -z "$HEIGHT" ]; then
  # Measure: the same page, plus a script that writes its height into it.
  MEASURE="$WORK/measure.html"
  cp "$HTML" "$MEASURE"
  echo "<script>var h=Math.ceil(document.documentElement.scrollHeight);document.body.insertAdjacentHTML('beforeend','<pre id=page-height>'+h+'</pre>')</script>" >>"$MEASURE"
  DOM=$(run "$CHROMIUM" "${FLAGS[@]}" --window-size=$WIDTH,1000 --virtual-time-budget=2000 \
    --dump-dom "file://$MEASURE" 2>/dev/null || true)
  MEASURED=$(printf '%s' "$DOM" | sed -n 's/.*<pre id="page-height">\([0-9]*\)<\/pre>.*/\1/p' | head -1)
  if [ -n "$MEASURED" ] && [ "$MEASURED" -gt 100 ]; then
    HEIGHT=$MEASURED
  else
    echo "warning: could not measure the page's height; using $DEFAULT_HEIGHT px" >&2
    HEIGHT=$DEFAULT_HEIGHT
  fi
fi

ABS_HTML=$(cd "$(dirname "$HTML")" && pwd)/$(basename "$HTML")
OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR"
ABS_OUT=$(cd "$OUT_DIR" && pwd)/$(basename "$OUT")
rm -f "$ABS_OUT"
run "$CHROMIUM" "${FLAGS[@]}" --window-size=$WIDTH,"$HEIGHT" --screenshot="$ABS_OUT" \
  "file://$ABS_HTML" >"$WORK/chromium.log" 2>&1 || true
if [ ! -s "$ABS_OUT" ]; then
  echo "error: Chromium wrote no screenshot; its output:" >&2
  cat "$WORK/chromium.log" >&2
  exit 1
fi
echo "$ABS_OUT (${WIDTH}x$HEIGHT)"
