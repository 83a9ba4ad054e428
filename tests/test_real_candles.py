"""Real candles: the shipped sample, the cache serving it, candles fetch, the simulator replay, the legacy stand-in."""
import datetime as dt, json
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from pybit.unified_trading import HTTP
from tradelab.candle_cache import CandleCache, synthetic_fetch
from tradelab.cli import main
from tradelab.core import ManualClock, UTC
from tradelab.db import Analysis, Trade
from tradelab.legacy import migrate_legacy
from tradelab.legacy_fixture import make_legacy_db
from tradelab.market import ReplayMarket, read_candle_dir, sample_dir
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, start_in_thread

M15, H1 = pd.Timedelta(minutes=15), pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def sample():
    return read_candle_dir(sample_dir())


def test_the_sample_loads_with_the_documented_rows_and_no_file_exceeds_2_mb(sample):
    files = sorted(sample_dir().glob("*.parquet"))
    assert len(files) == 12 and all(p.stat().st_size < 2_000_000 for p in files)
    assert sum(p.stat().st_size for p in files) < 8_000_000
    assert set(sample) == {(s, st) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT") for st in (M15, H1)}
    for (sym, step), f in sample.items():
        assert len(f) == (70_176 if step == M15 else 17_544)  # 2024-2025, no gaps (data/sample/README.md)
        assert f.index[0] == pd.Timestamp("2024-01-01", tz="UTC") and (f.index[1:] - f.index[:-1] == step).all()
        assert (f["high"] >= f[["open", "close"]].max(axis=1)).all() and (f["low"] > 0).all()
    assert sample[("BTCUSDT", H1)].loc["2024-03-14", "high"].max() == 73777.0  # a known Binance spot high


def test_the_cache_serves_real_candles_on_a_sample_date_and_synthetic_outside(tmp_path, sample):
    cache = CandleCache(tmp_path / "candles", synthetic_fetch(), ManualClock("2026-06-01T00:00:00Z"))
    real = cache.get("ETHUSDT", "15", "2025-03-01", "2025-03-03")
    want = sample[("ETHUSDT", M15)].loc["2025-03-01":"2025-03-02 23:45"]
    assert len(real) == 192 and (real[["open", "high", "low", "close"]].to_numpy()
                                 == want[["open", "high", "low", "close"]].to_numpy()).all()
    assert real.attrs["source"].startswith("real: ETHUSDT ETHUSDT_15m_bybit_perp")
    synth = cache.get("ETHUSDT", "15", "2026-03-01", "2026-03-03")
    assert len(synth) == 192 and synth.attrs["source"] == "synthetic: seed 0"
    assert cache.get("XRPUSDT", "60", "2025-03-01", "2025-03-02").attrs["source"] == "synthetic: seed 0"


def test_candles_fetch_fills_the_cache_from_the_simulator_and_a_second_run_fetches_nothing(data_dir, monkeypatch,
                                                                                            capsys):
    sim = start_in_thread(tick_seconds=3600)
    try:
        monkeypatch.setenv("BYBIT_BASE_URL", sim.url)
        args = ["candles", "fetch", "--symbol", "BTCUSDT", "--interval", "15", "--start", "2024-04-20",
                "--end", "2024-05-10", "--json"]
        assert main(args) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(args) == 0
        again = json.loads(capsys.readouterr().out)
    finally: sim.stop()
    assert first["months_fetched"] == 2 and first["candles"] == 20 * 96 and first["gaps"] == []
    assert first["source"] == "exchange: bybit" and again["months_fetched"] == 0 and again["candles"] == 20 * 96
    months = sorted(p.name for p in (data_dir / "candles" / "BTCUSDT" / "15").iterdir())
    assert months == ["2024-04.parquet", "2024-05.parquet"]
    assert len(pd.read_parquet(data_dir / "candles" / "BTCUSDT" / "15" / "2024-04.parquet")) == 30 * 96  # pages of 1000


def test_sim_replay_of_the_sample_dir_serves_its_klines_and_fills_a_market_order_at_the_replayed_price(sample):
    at = dt.datetime(2025, 3, 1, tzinfo=UTC)
    sim = start_in_thread(market=ReplayMarket(sample_dir(), clock=ManualClock(at)), tick_seconds=3600)
    try:
        s = HTTP(testnet=False, api_key=DEFAULT_KEY, api_secret=DEFAULT_SECRET, max_retries=1)
        s.endpoint = sim.url
        end = int((at - dt.timedelta(minutes=15)).timestamp() * 1000)
        rows = s.get_kline(category="linear", symbol="SOLUSDT", interval="15", end=end, limit=96)["result"]["list"]
        last = s.get_tickers(category="linear", symbol="BTCUSDT")["result"]["list"][0]["lastPrice"]
        s.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.001")
        fills = s.get_executions(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert sorted(sim.sim.market.symbols) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    finally: sim.stop()
    got = pd.DataFrame([[float(x) for x in r[1:5]] for r in rows[::-1]], columns=["open", "high", "low", "close"],
                       index=pd.to_datetime([int(r[0]) for r in rows[::-1]], unit="ms", utc=True))
    want = sample[("SOLUSDT", M15)].loc["2025-02-28 00:00":"2025-02-28 23:45", ["open", "high", "low", "close"]]
    assert (got.index == want.index).all() and (got.to_numpy() == want.to_numpy()).all()
    replayed = sample[("BTCUSDT", M15)].loc[at, "open"]  # the market time is the candle's start: its open
    assert float(last) == replayed and len(fills) == 1
    assert float(fills[0]["execPrice"]) == round(replayed * (1 + 0.5e-4), 1)  # a buy at the touch: half a 1 bps spread


def test_the_legacy_stand_ins_entries_are_within_the_real_candle_range_at_their_dates(sqlite_engine, tmp_path, sample):
    make_legacy_db(tmp_path / "old.db", 1500, 400, seed=5)
    migrate_legacy(sqlite_engine, tmp_path / "old.db")
    with Session(sqlite_engine) as s:
        rows = s.execute(sa.select(Analysis.symbol, Analysis.created_at, Analysis.entry_price)
                         .where(Analysis.entry_price.is_not(None))).all()
        rows += s.execute(sa.select(Trade.symbol, Trade.opened_at, Trade.entry_price)
                          .where(Trade.entry_price.is_not(None), Trade.opened_at.is_not(None))).all()
    assert len(rows) > 1000
    for sym, when, entry in rows:
        t = pd.Timestamp(when).tz_convert("UTC")
        assert pd.Timestamp("2024-01-01", tz="UTC") <= t < pd.Timestamp("2026-01-01", tz="UTC")
        k = sample[(sym, M15)].loc[t.floor("15min")]
        assert k["low"] <= float(entry) <= k["high"], (sym, t, entry)
