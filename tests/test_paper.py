"""Paper and backtest venues: the simulator's matching engine in process, prices from elsewhere."""
import datetime as dt
import pandas as pd
from tradelab.bybit import BybitPort, make_http
from tradelab.core import D, ManualClock, UTC
from tradelab.exchange import OrderRequest
from tradelab.orders import place_idempotent, reconcile
from tradelab.paper import paper_port, synthetic_port
from tradelab.simulator import Market, start_in_thread


def test_paper_trading_fills_in_process_at_live_public_prices():
    # stands in for Bybit mainnet's public endpoints (no keys needed); its market runs on the wall clock as mainnet's does
    sim = start_in_thread(market=Market(start=dt.datetime.now(UTC)))
    try:
        public = BybitPort(make_http("mainnet", base_url=sim.url), "mainnet")
        sim.set_price("ETHUSDT", "3000")
        paper = paper_port(public)
        assert paper.ticker("ETHUSDT").last == D(3000)
        paper.place_order(OrderRequest("ETHUSDT", "Buy", D("0.1"), order_link_id="p-1"))
        assert paper.positions()[0].size == D("0.1") and sim.call(lambda: len(sim.engine.orders)) == 0  # nothing sent
        assert len(paper.klines("ETHUSDT", "60", limit=10)) == 10
    finally:
        sim.stop()


def test_the_backtest_venue_never_shows_a_candle_from_the_future():
    clock = ManualClock("2024-07-01T10:30:00Z")
    bt = synthetic_port(clock)
    k = bt.klines("SOLUSDT", "60", limit=5)
    assert k.index[-1] == pd.Timestamp("2024-07-01T09:00:00Z")  # the 10:00 candle is still running
    clock.advance(minutes=30)
    assert bt.klines("SOLUSDT", "60", limit=5).index[-1] == pd.Timestamp("2024-07-01T10:00:00Z")


def test_idempotency_and_reconciliation_work_the_same_on_the_in_process_venue(sqlite_engine):
    bt = synthetic_port(ManualClock("2024-06-03T00:00:00Z"))
    req = OrderRequest("BTCUSDT", "Buy", D("0.002"), order_link_id="tl-7-entry")
    a = place_idempotent(sqlite_engine, bt, req, "backtest")
    b = place_idempotent(sqlite_engine, bt, req, "backtest")
    assert a.exchange_order_id == b.exchange_order_id and len(bt.engine.orders) == 1
    assert reconcile(sqlite_engine, bt, "backtest")["fills"] == 1
