"""Outcome evaluation: 15,000 analyses over a year of 1-minute candles for 5 symbols.

Run: make bench   (or: .venv/bin/python bench/bench_backtest.py)
"""
import os, sys, time
import numpy as np, pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tradelab.backtest import evaluate, evaluate_loop
from tradelab.candles import synthetic_candles

CMD = "python bench/bench_backtest.py"
SYMS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]


def analyses(n, candles, seed=1):
    rng = np.random.default_rng(seed)
    syms = rng.choice(SYMS, n); sides = rng.choice(["LONG", "SHORT"], n)
    rows = []
    for i in range(n):
        c = candles[syms[i]]; k = int(rng.integers(0, len(c) - 1)); px = float(c["close"].iat[k])
        d = 1 if sides[i] == "LONG" else -1; risk = px * rng.uniform(0.003, 0.02)
        rows.append((i, syms[i], sides[i], c.index[k + 1], px, px - d * risk, px + d * risk * rng.uniform(1.2, 3)))
    return pd.DataFrame(rows, columns=["id", "symbol", "recommendation", "created_at", "entry_price", "stop_loss",
                                       "take_profit"])


def main():
    print(f"== {CMD}")
    t = time.perf_counter()
    candles = {s: synthetic_candles(s, "1", "2024-01-01", "2025-01-01") for s in SYMS}
    print(f"candles: {sum(map(len, candles.values())):,} 1-minute candles for {len(SYMS)} symbols "
          f"built in {time.perf_counter() - t:.1f} s")
    a = analyses(15_000, candles)
    horizon = 1440
    t = time.perf_counter(); evaluate(a, candles, horizon); cold = time.perf_counter() - t
    ts = []
    for _ in range(3):
        t = time.perf_counter(); res = evaluate(a, candles, horizon); ts.append(time.perf_counter() - t)
    warm = sorted(ts)[1]
    print(f"numba: 15,000 analyses, horizon {horizon} bars: warm {warm:.2f} s ({15000 / warm:,.0f} analyses/s), "
          f"first call {cold:.2f} s")
    sub = a.sample(150, random_state=1)
    t = time.perf_counter(); slow = evaluate_loop(sub, candles, horizon); loop = time.perf_counter() - t
    per = loop / len(sub)
    same = (evaluate(sub, candles, horizon)["outcome"].loc[slow.index] == slow["outcome"]).all()
    print(f"pandas loop: {per * 1000:.0f} ms per analysis on 150 -> {per * 15000:.0f} s extrapolated for 15,000; "
          f"numba is {per * 15000 / warm:,.0f}x faster (outcomes identical on the sample: {same})")
    print(f"outcomes: {res['outcome'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
