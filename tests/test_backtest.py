"""Outcome evaluation: the numba kernel agrees with the pandas loop; results land per run in the store."""
import json
import numpy as np, pandas as pd
import pytest
from tradelab.backtest import evaluate, evaluate_loop, run_backtest
from tradelab.candle_cache import CandleCache, synthetic_fetch
from tradelab.candles import synthetic_candles
from tradelab.cli import main
from tradelab.core import ManualClock
from tradelab.legacy import migrate_legacy
from tradelab.legacy_fixture import make_legacy_db


def random_analyses(n, candles, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sym = rng.choice(list(candles)); c = candles[sym]
        k = int(rng.integers(0, len(c) - 10)); px = float(c["close"].iloc[k]); side = rng.choice(["LONG", "SHORT"])
        risk = px * rng.uniform(0.002, 0.02); d = 1 if side == "LONG" else -1
        rows.append(dict(id=i, symbol=sym, recommendation=side, created_at=c.index[k + 1], entry_price=px,
                         stop_loss=px - d * risk, take_profit=px + d * risk * rng.uniform(1, 3)))
    return pd.DataFrame(rows).set_index("id", drop=False)


def test_the_numba_kernel_and_the_pandas_loop_give_identical_outcomes():
    candles = {s: synthetic_candles(s, "5", "2024-02-01", "2024-02-15") for s in ("BTCUSDT", "ETHUSDT")}
    a = random_analyses(300, candles)
    fast, slow = evaluate(a, candles, 288), evaluate_loop(a, candles, 288)
    assert (fast["outcome"] == slow["outcome"]).all() and (fast["bars"] == slow["bars"]).all()
    assert np.allclose(fast["exit_price"], slow["exit_price"]) and np.allclose(fast["return_pct"], slow["return_pct"])
    assert set(fast["outcome"]) >= {"target", "stop"}


def test_a_candle_touching_both_levels_counts_as_the_stop():
    idx = pd.date_range("2024-01-01", periods=3, freq="1min", tz="UTC")
    c = {"X": pd.DataFrame({"open": [100, 100, 100], "high": [101, 110, 101], "low": [99, 90, 99],
                            "close": [100, 100, 100], "volume": 1.0, "turnover": 1.0}, index=idx)}
    a = pd.DataFrame([dict(id=1, symbol="X", recommendation="LONG", created_at=idx[1], entry_price=100, stop_loss=95,
                           take_profit=105)])
    r = evaluate(a, c, 10).iloc[0]
    # fees and slippage make it worse than -1R
    assert r["outcome"] == "stop" and r["exit_price"] == 95 and r["r_multiple"] < -1


def test_only_candles_starting_at_or_after_the_analysis_are_used():
    idx = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
    # the target is touched one candle BEFORE the analysis: that must not count
    c = {"X": pd.DataFrame({"open": 100.0, "high": [120, 101, 101, 101], "low": 99.0, "close": 100.0, "volume": 1.0,
                            "turnover": 1.0}, index=idx)}
    a = pd.DataFrame([dict(id=1, symbol="X", recommendation="LONG", created_at=idx[0] + pd.Timedelta("30min"),
                           entry_price=100, stop_loss=90, take_profit=110)])
    r = evaluate(a, c, 10).iloc[0]
    assert r["outcome"] == "none" and r["bars"] == 3


def test_backtesting_the_migrated_history_stores_one_outcome_per_analysis_and_run(engine, tmp_path):
    make_legacy_db(tmp_path / "old.db", 1500, 400, seed=4)
    migrate_legacy(engine, tmp_path / "old.db")
    cache = CandleCache(tmp_path / "candles", synthetic_fetch(), ManualClock("2026-01-01T00:00:00Z"))
    res = run_backtest(engine, cache, "r1", interval="5", horizon=288)
    assert res["analyses"] > 500 and res["target"] > 0 and res["stop"] > 0
    again = run_backtest(engine, cache, "r1", interval="5", horizon=288)
    with engine.connect() as c:
        q = "select count(*), count(distinct analysis_id) from analysis_outcomes where run = 'r1'"
        n = c.exec_driver_sql(q).fetchone()
    assert n[0] == n[1] == res["analyses"] == again["analyses"]
    assert {r["prompt_version"] for r in res["by_prompt"]} >= {"v1", "v1-unknown"}


def test_backtest_command_prints_json(data_dir, tmp_path, capsys):
    make_legacy_db(tmp_path / "old.db", 800, 400, seed=2)
    assert main(["db", "upgrade"]) == 0 and main(["migrate-legacy", str(tmp_path / "old.db"), "--json"]) == 0
    capsys.readouterr()
    assert main(["backtest", "--interval", "15", "--horizon", "96", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["analyses"] == out["target"] + out["stop"] + out["none"] + out["no_data"]
    assert (data_dir / "candles" / "BTCUSDT" / "15").is_dir()


def test_candles_come_from_the_exchange_port_paginated_and_are_then_served_from_parquet(tmp_path):
    from tradelab.bybit import BybitPort, make_http
    from tradelab.candle_cache import port_fetch
    from tradelab.simulator import start_in_thread
    sim = start_in_thread()
    try:
        http = make_http("testnet", "tradelab-sim", "tradelab-sim-secret", sim.url, timeout=5)
        port = BybitPort(http, "sim", backoff=0.01)
        cache = CandleCache(tmp_path / "candles", port_fetch(port))
        got = cache.get("BTCUSDT", "15", "2024-04-20", "2024-05-10")  # 1,920 candles: two kline pages, two month files
        direct = port.klines("BTCUSDT", "15", "2024-04-20", "2024-05-10")
    finally: sim.stop()
    assert len(got) == 20 * 96 and (got.index[1:] - got.index[:-1] == pd.Timedelta(minutes=15)).all()
    pd.testing.assert_frame_equal(got, direct, check_freq=False, check_dtype=False)
    months = sorted(p.name for p in (tmp_path / "candles" / "BTCUSDT" / "15").iterdir())
    assert months == ["2024-04.parquet", "2024-05.parquet"]
    fetched = cache.fetches
    again = cache.get("BTCUSDT", "15", "2024-04-25", "2024-05-02")  # the simulator is gone: only the cache can answer
    assert cache.fetches == fetched and len(again) == 7 * 96 and again.equals(got.loc["2024-04-25":"2024-05-01 23:45"])


@pytest.mark.slow
def test_backtest_command_reads_candles_through_the_configured_venue(data_dir, tmp_path, capsys, monkeypatch):
    from tradelab.simulator import start_in_thread
    make_legacy_db(tmp_path / "old.db", 300, 400, seed=3)
    assert main(["db", "upgrade"]) == 0 and main(["migrate-legacy", str(tmp_path / "old.db"), "--json"]) == 0
    sim = start_in_thread()
    try:
        monkeypatch.setenv("BYBIT_BASE_URL", sim.url)
        capsys.readouterr()
        assert main(["backtest", "--source", "exchange", "--interval", "240", "--horizon", "12", "--json"]) == 0
    finally: sim.stop()
    out = json.loads(capsys.readouterr().out)
    assert out["analyses"] > 0 and out["target"] + out["stop"] > 0
    assert (data_dir / "candles-sim" / "BTCUSDT" / "240").is_dir()
