"""Perpetual mechanics shared by the three venues: mark price, funding, liquidation (isolated and cross), fees."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab.bybit import BybitPort, make_http
from tradelab.core import D, ManualClock
from tradelab.db import Fill
from tradelab.exchange import OrderRequest
from tradelab.matching import Engine
from tradelab.orders import ingest_executions
from tradelab.paper import paper_port, synthetic_port
from tradelab.positions import book_from_fills
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, start_in_thread

T0 = "2024-06-01T07:00:00Z"


def engine(**kw):
    e = Engine(clock=ManualClock(T0), spread_bps="0", **kw)
    e.on_price("BTCUSDT", "60000")
    return e


def buy(e, qty="0.1", **kw):
    e.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": qty, **kw})


def funding(execs):
    return [x for x in execs if x.get("execType", getattr(x, "exec_type", None)) == "Funding"]


def test_funding_settles_into_the_wallet_at_every_interval_as_funding_executions():
    e = engine(); buy(e)
    after_fee = e.balance
    for _ in range(24):
        e.clock.advance(hours=1); e.on_price("BTCUSDT", "60000")
    xs = funding(e.execs)
    assert [x["execTime"] for x in xs] == [str(ManualClock(t).ms()) for t in
                                           ("2024-06-01T08:00:00Z", "2024-06-01T16:00:00Z", "2024-06-02T00:00:00Z")]
    assert {(x["execFee"], x["feeRate"], x["execPrice"], x["side"], x["orderId"]) for x in xs} == {
        ("0.6", "0.0001", "60000", "Buy", "")}
    assert e.balance == after_fee - D("1.8") and e.positions()[0]["cumRealisedPnl"] == str(-D("3.3") - D("1.8"))


def test_a_short_receives_a_positive_rate_and_a_set_rate_is_used():
    e = engine(); e.place({"symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1"})
    e.set_funding("BTCUSDT", "0.0005")
    before = e.balance
    e.clock.advance(hours=1); e.on_price("BTCUSDT", "60000")
    (x,) = funding(e.execs)
    assert x["execFee"] == "-3" and e.balance == before + 3


def test_the_funding_schedule_survives_a_restore():
    e = engine(); buy(e)
    e2 = Engine.from_state(e.state(), clock=e.clock, spread_bps="0")  # saved at 07:00, before the 08:00 settlement
    e2.clock.advance(hours=2); e2.on_price("BTCUSDT", "60000")
    assert len(funding(e2.execs)) == 1


def test_an_isolated_position_is_liquidated_when_the_mark_crosses_not_the_last_price():
    e = engine(); e.set_leverage("BTCUSDT", "20"); buy(e)  # liq 57300, bust 57000
    assert (e.positions()[0]["liqPrice"], e.positions()[0]["tradeMode"]) == ("57300", 1)
    e.on_price("BTCUSDT", "57000", mark="57400")  # a wick of the last price: nothing
    assert e.positions()
    e.on_price("BTCUSDT", "57400", mark="57300")
    x = e.execs[-1]
    assert e.positions() == [] and (x["execType"], x["createType"], x["execPrice"]) == ("BustTrade", "CreateByLiq",
                                                                                        "57000")


def test_a_cross_position_is_liquidated_when_the_equity_falls_to_the_maintenance_margin():
    e = engine(balance="1000", margin_mode="REGULAR_MARGIN"); buy(e)  # 6000 of value, 30 of MM, 996.7 of equity
    p = e.positions()[0]
    assert (p["liqPrice"], p["positionMM"], p["tradeMode"]) == ("50333", "30", 0)
    iso = engine(balance="1000"); buy(iso)
    assert D(iso.positions()[0]["liqPrice"]) > D(p["liqPrice"])  # isolated risks only its margin: liquidated sooner
    e.on_price("BTCUSDT", "50400"); assert e.positions()
    e.on_price("BTCUSDT", "50333")
    assert e.positions() == [] and e.execs[-1]["execType"] == "BustTrade" and e.balance < 0


def test_cross_liquidation_takes_every_position_once_the_account_is_under_water():
    e = engine(balance="1000", margin_mode="REGULAR_MARGIN"); buy(e)
    e.on_price("ETHUSDT", "3000"); e.place({"symbol": "ETHUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1"})
    e.on_price("BTCUSDT", "50000")
    assert e.positions() == [] and [x["symbol"] for x in e.execs if x["execType"] == "BustTrade"] == [
        "BTCUSDT", "ETHUSDT"]


def test_a_resting_limit_pays_the_maker_fee_and_a_market_order_the_taker_fee():
    e = engine()
    e.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.1", "price": "59000"})
    e.on_price("BTCUSDT", "59000")
    buy(e)
    (maker, taker) = e.execs
    assert (maker["isMaker"], maker["feeRate"], maker["execFee"]) == (True, "0.0002", "1.18")
    assert (taker["isMaker"], taker["feeRate"], taker["execFee"]) == (False, "0.00055", "3.245")


def test_funding_and_liquidation_happen_on_the_simulator_through_pybit():
    clock = ManualClock(T0)
    sim = start_in_thread(engine=Engine(clock=clock))
    try:
        port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url), "sim")
        sim.set_price("BTCUSDT", "60000")
        port.place_order(OrderRequest("BTCUSDT", "Buy", D("0.1"), order_link_id="perp-sim-1"))
        before = port.equity()
        clock.advance(hours=1); sim.set_price("BTCUSDT", "60000")
        (x,) = [x for x in port.executions(symbol="BTCUSDT") if x.exec_type == "Funding"]
        assert x.fee > 0 and port.equity() == before - x.fee
        sim.call(lambda: sim.sim.engine.on_price("BTCUSDT", "60000", mark="50000"))  # the mark falls through 54300
        assert port.positions() == [] and port.executions()[-1].exec_type == "BustTrade"
    finally:
        sim.stop()


def test_funding_settles_on_the_paper_venue_and_is_kept_in_its_account(sqlite_engine):
    sim = start_in_thread()
    try:
        public = BybitPort(make_http("mainnet", base_url=sim.url), "mainnet")
        sim.set_price("BTCUSDT", "60000")
        clock = ManualClock(T0)
        paper = paper_port(public, clock, db=sqlite_engine)
        paper.place_order(OrderRequest("BTCUSDT", "Buy", D("0.01"), order_link_id="perp-paper-1"))
        clock.advance(hours=1); paper.step()
        again = paper_port(public, clock, db=sqlite_engine)  # the next run reads the account back
        assert [x.fee for x in again.executions() if x.exec_type == "Funding"] == [D("0.06")]
    finally:
        sim.stop()


def test_a_backtest_pnl_includes_funding_and_a_backtest_position_can_be_liquidated(sqlite_engine):
    bt = synthetic_port(ManualClock(T0), spread_bps="0")
    price = {"BTCUSDT": D(60000)}
    bt.prices = lambda: dict(price)
    bt.step()
    bt.place_order(OrderRequest("BTCUSDT", "Buy", D("0.1"), order_link_id="bt-perp-in"))
    for _ in range(8):
        bt.clock.advance(hours=1); bt.step()
    price["BTCUSDT"] = D(61000); bt.step()
    bt.place_order(OrderRequest("BTCUSDT", "Sell", D("0.1"), reduce_only=True, order_link_id="bt-perp-out"))
    (fx,) = [x for x in bt.executions() if x.exec_type == "Funding"]
    assert bt.equity() == 10000 + 100 - sum(x.fee for x in bt.executions())
    ingest_executions(sqlite_engine, bt, "backtest", bt.clock)
    with Session(sqlite_engine) as s:
        fills = s.scalars(sa.select(Fill).order_by(Fill.executed_at, Fill.id)).all()
    book = book_from_fills("BTCUSDT", fills)
    assert fx.fee in [f.fee for f in fills] and book.net_realised == bt.equity() - 10000  # PnL carries the funding
    bt.set_leverage("BTCUSDT", 50)
    bt.place_order(OrderRequest("BTCUSDT", "Sell", D("0.1"), order_link_id="bt-perp-short"))
    price["BTCUSDT"] = D(62500); bt.step()
    assert bt.positions() == [] and bt.executions()[-1].exec_type == "BustTrade"


@pytest.mark.parametrize("mode", ["ISOLATED_MARGIN", "REGULAR_MARGIN"])
def test_positions_show_the_margin_fields_bybit_sends(mode):
    e = engine(margin_mode=mode); buy(e)
    p = e.positions()[0]
    assert (p["positionIM"], p["positionMM"], p["curRealisedPnl"], p["markPrice"]) == ("600", "30", "-3.3", "60000")
    w = e.wallet()["list"][0]
    assert (w["totalInitialMargin"], w["totalMaintenanceMargin"]) == ("600", "30")
