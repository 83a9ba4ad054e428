#!/usr/bin/env bash
# Browser tests drive Debian's Chromium: install it when missing (root or sudo, Debian's package registry).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then echo "chromium: $(chromium --version 2>/dev/null | head -1)"; exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium: installed $(chromium --version 2>/dev/null | head -1)"
