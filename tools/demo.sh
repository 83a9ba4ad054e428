#!/usr/bin/env bash
# make demo: the main job, offline, on embedded defaults (SQLite under data/, built-in simulator, technical analyzer).
set -euo pipefail
cd "$(dirname "$0")/.."
TL=.venv/bin/tradelab
$TL db upgrade
$TL report performance
