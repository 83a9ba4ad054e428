#!/usr/bin/env bash
# make demo: the main job, offline, on embedded defaults (SQLite under data/, built-in simulator, technical analyzer).
# 1. migrate the old bot's history, 2. report and backtest it, 3. start the desk (tradelab up) and trade a few cycles
# against its simulator through pybit, 4. leave the desk running (Ctrl-C or DEMO_SECONDS=N stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
TL=.venv/bin/tradelab
PY=.venv/bin/python
PORT=${TRADELAB_DEMO_PORT:-8790}
HEALTH_PORT=${TRADELAB_DEMO_HEALTH_PORT:-5006}
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

step "backtest every migrated analysis against the real 15-minute candles that follow it (24 hours)"
$TL backtest --run demo --interval 15 --horizon 96
$TL report calibration --run demo
$TL report compare v1 v2-confluence --run demo

DEMO_SETTINGS="$TRADELAB_DATA_DIR/demo-settings.ini"
sed -E 's/^timeframes = .*/timeframes = 1/; s/^symbols = .*/symbols = BTCUSDT, ETHUSDT/' settings.ini > "$DEMO_SETTINGS"
TLD="$TL --settings $DEMO_SETTINGS"
HEALTH="http://127.0.0.1:$HEALTH_PORT/health"

step "the desk: tradelab up (scheduler, streams, events, dashboard, /health) on the built-in simulator at 127.0.0.1:$PORT,
replaying the real 2024-2025 candles shipped in data/sample/candles (1 hour of market a second)"
# In a script (no terminal) the desk stops by itself DEMO_SECONDS (default 120) after the story; at a terminal it
# runs until Ctrl-C, or DEMO_SECONDS if set. The demo's settings ($DEMO_SETTINGS) trade BTCUSDT and ETHUSDT on 1-minute candles,
# so a scheduled cycle runs every minute.
if [ -z "${DEMO_SECONDS:-}" ] && [ ! -t 0 ]; then DEMO_SECONDS=120; fi
$TLD up --port "$HEALTH_PORT" --sim-port "$PORT" --sim-speed 3600 --sim-replay data/sample/candles \
  > "$TRADELAB_DATA_DIR/desk.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null || true; wait $UP 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 300); do
  $PY -c "import urllib.request; urllib.request.urlopen('$HEALTH', timeout=1)" 2>/dev/null && break
  kill -0 $UP 2>/dev/null || { cat "$TRADELAB_DATA_DIR/desk.log"; exit 1; }
  sleep 0.2
done
grep -v " INFO " "$TRADELAB_DATA_DIR/desk.log" | head -n 6

if [ "$($TL users list --json)" = "[]" ]; then
  step "the dashboard's first user: admin"
  $PY -c "import secrets; print(secrets.token_urlsafe(24))" | $TL users add admin --role admin
  OTP=$($TL users reset admin | tail -n 1)
  echo "log in at http://127.0.0.1:$HEALTH_PORT/desk as admin with the one-time password $OTP (shown once)"
fi

step "trade: 3 cycles against the desk's simulator through pybit, as the scheduled pipeline runs them"
export BYBIT_BASE_URL="http://127.0.0.1:$PORT"
$TLD run trading_cycle --wait 600 -p cycles 3 -p pause_seconds 2 -p settings_path "$DEMO_SETTINGS"

step "what the risk rules see now on the simulator, and its trades (statistics never mix venues)"
$TLD status
$TLD report performance --venue sim

step "the desk keeps running: dashboard http://127.0.0.1:$HEALTH_PORT/desk, health $HEALTH, API /api/v1/, runs (tradelab runs)"
$PY - "$HEALTH" <<'PY'
import json, sys, urllib.request
h = json.load(urllib.request.urlopen(sys.argv[1]))
last = {k: (v or {}).get("status") for k, v in h["scheduler"].get("last", {}).items()}
print(f"health: ok={h['ok']} down={h['down']} venue={h['venue']} database={h['database']['ok']} "
      f"exchange={h['exchange']['ok']} streams lag={h.get('streams', {}).get('lag_s')}s "
      f"halted={h['kill_switch'].get('halted')}\nlast runs {last}; next run {h['scheduler'].get('next_run')}")
PY
echo "its log: $TRADELAB_DATA_DIR/desk.log; open nbs/research/*.ipynb in JupyterLab (.venv/bin/jupyter lab) to look further."
echo "Ctrl-C stops the desk${DEMO_SECONDS:+; it stops by itself after ${DEMO_SECONDS}s}."
if [ -n "${DEMO_SECONDS:-}" ]; then (sleep "$DEMO_SECONDS"; kill -INT $UP 2>/dev/null) & fi
wait $UP || true
trap - EXIT
tail -n 3 "$TRADELAB_DATA_DIR/desk.log"
