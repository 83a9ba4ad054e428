"""Market replay: how fast the simulator's replay market plays one week of real 1m candles.

Run: make bench   (or: .venv/bin/python bench/bench_replay_market.py [DATA_DIR])
DATA_DIR defaults to ../shared/data (real Binance 1m candles for BTC, ETH, SOL); the shipped sample
(data/sample/candles, 15m) is used when it is absent. One tick per market minute (a tick every real second at 60x):
every symbol's price and its running 1m kline (what tickers and kline pushes read), plus a 200-candle 15m chart per
symbol every 15 market minutes (what a kline request reads). The simulator itself ticks every 0.1 s: at 60x it needs
10 ticks per second.
"""
import datetime as dt, os, sys, time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tradelab.core import ManualClock
from tradelab.market import ReplayMarket, sample_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"


def main():
    src = DATA if DATA.is_dir() else sample_dir()
    t0 = time.perf_counter()
    m = ReplayMarket(src, clock=ManualClock("2025-06-01T00:00:00Z"))
    load = time.perf_counter() - t0
    clock, ticks, week = m.clock, 0, dt.timedelta(days=7)
    end = clock.now() + week
    t0 = time.perf_counter()
    while clock.now() < end:
        for s in m.symbols:
            m.price(s); m.candles(s, "1", 2)
            if clock.now().minute % 15 == 0: m.candles(s, "15", 200)
        clock.advance(seconds=60); ticks += 1
    took = time.perf_counter() - t0
    minutes = week.total_seconds() / 60
    steps = ", ".join(f"{s} {m.steps[s].total_seconds() / 60:g}m" for s in m.symbols)
    print(f"replay of {src} ({steps}): loaded in {load:.1f} s")
    print(f"one week, a tick per market minute: {ticks:,} ticks in {took:.1f} s = {minutes / took:,.0f} simulated "
          f"minutes per second ({ticks / took:,.0f} ticks/s; the simulator at 60x needs 10 ticks/s)")
    print(f"command: .venv/bin/python bench/bench_replay_market.py {DATA if len(sys.argv) > 1 else ''}".rstrip())


if __name__ == "__main__":
    main()
