#!/usr/bin/env bash
# make demo: the main job, offline, on embedded defaults (SQLite under data/, built-in simulator, technical analyzer).
# 1. migrate the old bot's history, 2. report and backtest it, 3. trade a few cycles against the simulator through pybit.
set -euo pipefail
cd "$(dirname "$0")/.."
TL=.venv/bin/tradelab
PY=.venv/bin/python
PORT=${TRADELAB_DEMO_PORT:-8790}
unset DATABASE_URL REDIS_URL OPENAI_API_KEY BYBIT_API_KEY BYBIT_API_SECRET  # embedded defaults, whatever the shell has
export TRADELAB_DATA_DIR=${TRADELAB_DATA_DIR:-data}
mkdir -p "$TRADELAB_DATA_DIR"
step() { printf '\n== %s\n' "$*"; }

step "database (SQLite at $TRADELAB_DATA_DIR/tradelab.db)"
$TL db upgrade

LEGACY="$TRADELAB_DATA_DIR/legacy_export.db"
if [ ! -f "$LEGACY" ]; then
  step "no export of the old bot here: generating a stand-in with its shape and quirks ($LEGACY)"
  $PY -m tradelab.legacy_fixture "$LEGACY"
fi
step "migrate the old bot's analyses and trades (read-only, idempotent)"
$TL migrate-legacy "$LEGACY"

step "performance and prompt win rates of the migrated history"
$TL report performance
$TL report prompts

step "backtest every migrated analysis against later candles (15-minute bars, 24 hours)"
$TL backtest --run demo --interval 15 --horizon 96
$TL report calibration --run demo
$TL report compare v1 v2-confluence --run demo

step "trade: 3 cycles against the built-in Bybit V5 simulator on 127.0.0.1:$PORT, through pybit"
$TL sim --port "$PORT" --speed 3600 > "$TRADELAB_DATA_DIR/sim.log" 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/sim/health', timeout=1)" 2>/dev/null && break
  kill -0 $SIM 2>/dev/null || { cat "$TRADELAB_DATA_DIR/sim.log"; exit 1; }
  sleep 0.2
done
export BYBIT_BASE_URL="http://127.0.0.1:$PORT"
$TL run trading_cycle -p cycles 3 -p pause_seconds 2

step "what the risk rules see now on the simulator, and its trades (statistics never mix venues)"
$TL status
$TL report performance --venue sim

step "done: open nbs/research/*.ipynb in JupyterLab (.venv/bin/jupyter lab) to look further; run records are under $TRADELAB_DATA_DIR/runs/"
