"""Paper and backtest venues: the simulator's matching engine in process, prices from elsewhere."""
import datetime as dt, json, subprocess, sys, textwrap
import pandas as pd
import pytest
from tradelab.bybit import BybitPort, make_http
from tradelab.core import D, ManualClock, UTC
from tradelab.exchange import OrderRequest
from tradelab.matching import Engine
from tradelab.orders import place_idempotent, reconcile
from tradelab.paper import paper_port, synthetic_port
from tradelab.simulator import Market, start_in_thread


def test_paper_trading_fills_in_process_at_live_public_prices():
    # stands in for Bybit mainnet's public endpoints (no keys needed);
    # its market runs on the wall clock as mainnet's does
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


# -- the paper account persists between runs and processes (issue 9, item 2)


@pytest.fixture(scope="module")
def market():
    "Bybit's public endpoints, played by the simulator with pinned prices."
    sim = start_in_thread()
    for s, p in {"BTCUSDT": "60000", "ETHUSDT": "3000", "SOLUSDT": "150", "XRPUSDT": "0.5", "DOGEUSDT": "0.1"}.items():
        sim.set_price(s, p)
    yield sim
    sim.stop()


def public(sim): return BybitPort(make_http("mainnet", base_url=sim.url), "mainnet")


def account(port):
    return (port.equity(), port.positions(), port.open_orders(), port.executions(), port.engine.balance,
            {s: p.leverage for s, p in port.engine.pos.items()})


def test_a_second_run_finds_the_first_runs_balance_positions_resting_orders_and_executions(engine, market):
    market.set_price("ETHUSDT", "3000"); market.set_price("BTCUSDT", "60000")
    run1 = paper_port(public(market), db=engine)
    run1.set_leverage("SOLUSDT", 5)
    run1.place_order(OrderRequest("ETHUSDT", "Buy", D("0.1"), take_profit=D("3100"), stop_loss=D("2900"),
                                  order_link_id="r1-e"))
    run1.place_order(OrderRequest("BTCUSDT", "Buy", D("0.001"), "Limit", D("50000"), order_link_id="r1-limit"))
    run2 = paper_port(public(market), db=engine)
    assert account(run2) == account(run1)
    assert run2.engine.balance < D(10000) and run2.positions()[0].take_profit == D(3100)
    assert [o.order_link_id for o in run2.open_orders()] == ["r1-limit"] and run2.engine.pos["SOLUSDT"].leverage == 5
    assert run2.engine.state() == run1.engine.state()  # every Decimal exact, the sequence carried on
    run2.cancel_order("BTCUSDT", "r1-limit")
    assert run1.open_orders() == [] and run1.order_by_link_id("BTCUSDT", "r1-limit").status == "Cancelled"


def test_a_position_opened_with_a_take_profit_in_one_run_closes_at_it_in_the_next(engine, market):
    market.set_price("ETHUSDT", "3000")
    run1 = paper_port(public(market), db=engine)
    run1.place_order(OrderRequest("ETHUSDT", "Buy", D("0.2"), take_profit=D("3100"), order_link_id="tp-entry"))
    del run1
    run2 = paper_port(public(market), db=engine)
    assert run2.positions()[0].size == D("0.2")  # still open
    market.set_price("ETHUSDT", "3100.5")
    run2.step()
    assert run2.positions() == []
    close = run2.executions()[-1]
    assert (close.stop_order_type, close.create_type, close.side, close.qty) == (
        "TakeProfit", "CreateByTakeProfit", "Sell", D("0.2"))
    run3 = paper_port(public(market), db=engine)
    assert run3.positions() == [] and run3.equity() == run2.equity() > D(10000)


def test_two_processes_writing_one_after_the_other_never_lose_an_update(engine, market):
    market.set_price("SOLUSDT", "150")
    a, b = paper_port(public(market), db=engine), paper_port(public(market), db=engine)
    a.place_order(OrderRequest("SOLUSDT", "Buy", D("1"), order_link_id="a-1"))
    b.place_order(OrderRequest("SOLUSDT", "Buy", D("2"), order_link_id="b-1"))  # b's memory is stale: it re-reads first
    a.place_order(OrderRequest("SOLUSDT", "Buy", D("3"), order_link_id="a-2"))
    c = paper_port(public(market), db=engine)
    assert c.positions()[0].size == D("6") and {x.order_link_id for x in c.executions()} == {"a-1", "b-1", "a-2"}
    assert c.engine.balance == D(10000) - sum(x.fee for x in c.executions())


def test_a_real_second_process_sees_the_account_and_adds_to_it(engine, market):
    market.set_price("XRPUSDT", "0.5")
    url = engine.url.render_as_string(hide_password=False)
    mine = paper_port(public(market), db=engine)
    mine.place_order(OrderRequest("XRPUSDT", "Buy", D("100"), order_link_id="parent-1"))
    script = textwrap.dedent(f"""
        import json
        from decimal import Decimal
        from tradelab.bybit import BybitPort, make_http
        from tradelab.db import make_engine
        from tradelab.exchange import OrderRequest
        from tradelab.paper import paper_port
        port = paper_port(BybitPort(make_http("mainnet", base_url="{market.url}"), "mainnet"), db=make_engine("{url}"))
        seen = [str(p.size) for p in port.positions()]
        port.place_order(OrderRequest("XRPUSDT", "Buy", Decimal("50"), order_link_id="child-1"))
        print(json.dumps({{"seen": seen, "equity": str(port.equity())}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["seen"] == ["100"]
    assert mine.positions()[0].size == D("150") and str(mine.equity()) == child["equity"]
    assert [x.order_link_id for x in mine.executions()] == ["parent-1", "child-1"]


def test_the_stored_account_keeps_only_recent_history():
    e = Engine(clock=ManualClock("2024-06-01T00:00:00Z"), spread_bps="0")
    e.on_price("BTCUSDT", "60000")
    for i in range(30):
        e.place({"symbol": "BTCUSDT", "side": "Buy" if i % 2 == 0 else "Sell", "orderType": "Market", "qty": "0.001",
                 "orderLinkId": f"h-{i}"})
    e.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001", "price": "10000",
             "orderLinkId": "rest"})
    e.prune(keep=10)
    assert len(e.execs) == 10 and len(e.closed) == 10 and e.execs[-1]["orderLinkId"] == "h-29"
    assert e.find(open_only=True)[0]["orderLinkId"] == "rest" and len(e.orders) == 11 and "h-0" not in e.by_link


def test_the_simulator_and_the_backtest_venue_serve_the_same_prices_for_a_seed():
    sim = start_in_thread(market=Market(seed=3, start="2024-06-10T00:00:00Z"))
    try:
        raw = BybitPort(make_http("mainnet", base_url=sim.url), "mainnet").http.get_kline(
            category="linear", symbol="SOLUSDT", interval="60", start=1717200000000, end=1717545599999,
            limit=1000)["result"]["list"]
        bt = synthetic_port(ManualClock("2024-06-10T00:00:00Z"), seed=3)
        mine = bt.klines("SOLUSDT", "60", "2024-06-01T00:00:00Z", "2024-06-05T00:00:00Z")
        same = sim.sim._rows(sim.sim.engine.spec("SOLUSDT"), mine)  # the simulator's own rounding to the tick
        assert len(raw) == len(same) == 96
        assert [r[:6] for r in raw] == [r[:6] for r in same]
        other = synthetic_port(ManualClock("2024-06-10T00:00:00Z"), seed=4).klines("SOLUSDT", "60", "2024-06-01",
                                                                                    "2024-06-05")
        assert not other["close"].equals(mine["close"])
    finally:
        sim.stop()


@pytest.mark.slow
def test_two_processes_trading_one_paper_account_at_the_same_time_lose_nothing(engine, market):
    market.set_price("DOGEUSDT", "0.1")
    url = engine.url.render_as_string(hide_password=False)
    script = textwrap.dedent(f"""
        import sys
        from decimal import Decimal
        from tradelab.bybit import BybitPort, make_http
        from tradelab.db import make_engine
        from tradelab.exchange import OrderRequest
        from tradelab.paper import paper_port
        port = paper_port(BybitPort(make_http("mainnet", base_url="{market.url}"), "mainnet"), db=make_engine("{url}"))
        for i in range(15):
            port.place_order(OrderRequest("DOGEUSDT", "Buy", Decimal("100"), order_link_id=f"{{sys.argv[1]}}-{{i}}"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stderr=subprocess.PIPE, text=True)
             for name in ("p", "q")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    port = paper_port(public(market), db=engine)
    links = [x.order_link_id for x in port.executions()]
    assert sorted(links) == sorted(f"{n}-{i}" for n in "pq" for i in range(15))
    assert port.positions()[0].size == D("3000")
    assert port.engine.balance == D(10000) - sum(x.fee for x in port.executions())
