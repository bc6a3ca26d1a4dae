#!/usr/bin/env bash
# Make sure a headless-capable Chromium is installed (Debian package `chromium`), for the
# browser test of `metering report` (tests/test_report.py). Idempotent and
# non-interactive: does nothing when Chromium is already there. Needs root (or sudo)
# for apt-get; prints one line saying what it found or did.
set -euo pipefail

find_chromium() {
  local name
  for name in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
    if [ -n "$name" ] && command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if path=$(find_chromium); then
  echo "chromium: $path ($("$path" --version 2>/dev/null | head -n1 || echo 'version unknown'))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and apt-get is not available; install Chromium and/or set CHROMIUM" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "chromium: not installed; run this script as root to apt-get install it" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "chromium: installing the Debian package (apt-get install chromium)..."
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null

path=$(find_chromium) || { echo "chromium: installation did not provide a chromium binary" >&2; exit 1; }
echo "chromium: $path ($("$path" --version 2>/dev/null | head -n1 || echo 'version unknown'))"
