#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser, marked `browser`).
#
# Idempotent: does nothing when /usr/bin/chromium already exists. No browser is
# downloaded from anywhere but Debian's package archive; Playwright is pointed at
# /usr/bin/chromium instead of fetching its own build.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-liberation

"$CHROMIUM" --version
