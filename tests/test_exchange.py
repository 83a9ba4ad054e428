"""The exchange layer through the real pybit client over loopback to the built-in V5 simulator."""
import os, random, signal, subprocess, sys, textwrap, time
import pytest
import sqlalchemy as sa
from tradelab.bybit import BybitPort, BybitWebSocket, make_http, set_time_offset
from tradelab.core import D
from tradelab.db import Order, Fill, make_engine
from tradelab.exchange import OrderRequest, AuthError, RejectedError
from tradelab.orders import order_link_id, place_idempotent, reconcile
from tradelab.simulator import start_in_thread

KEY, SECRET = "tradelab-sim", "tradelab-sim-secret"


@pytest.fixture
def sim():
    h = start_in_thread(rate_limits={"order": 100_000, "read": 100_000, "position": 100_000})
    yield h
    h.stop()


def port_for(sim, key=KEY, secret=SECRET, **kw):
    http = make_http("testnet", key, secret, sim.url, timeout=kw.pop("timeout", 5))
    return BybitPort(http, "sim", backoff=0.01, **kw)


def test_market_data_and_instruments_come_through_pybit(sim):
    p = port_for(sim)
    inst = p.instrument("BTCUSDT")
    assert inst.tick_size == D("0.1") and inst.qty_step == D("0.001") and inst.min_notional == D(5)
    assert p.ticker("ETHUSDT").last > 0 and p.equity() == D(10000)
    c = p.klines("SOLUSDT", "1", "2024-05-30T00:00:00Z", "2024-05-31T06:00:00Z")
    assert len(c) == 30 * 60 and c.index.is_monotonic_increasing  # two pages of 1,000, no duplicates
    recent = p.klines("BTCUSDT", "60", limit=50)
    hour = sim.sim.market.now().replace(minute=0, second=0, microsecond=0).astimezone()
    assert len(recent) == 50 and recent.index[-1] < hour


def test_a_wrong_key_is_a_clear_error_naming_the_environment(sim):
    with pytest.raises(AuthError, match="check your Bybit key for sim"):
        port_for(sim, secret="wrong").equity()
    with pytest.raises(AuthError, match="10003"):
        port_for(sim, key="nobody").equity()


def test_a_skewed_clock_is_resynced_from_the_server_and_the_call_retried_once(sim):
    p = port_for(sim)
    set_time_offset(-30_000)  # our clock 30 s behind: outside the 5 s recv window
    try:
        assert p.equity() == D(10000) and p.calls["resyncs"] == 1
    finally:
        set_time_offset(0)


def test_bad_orders_are_refused_before_sending_with_the_rule_named(sim):
    p = port_for(sim)
    for req, why in [(OrderRequest("FOOUSDT", "Buy", D(1), order_link_id="x1"), "unknown symbol FOOUSDT"),
                     (OrderRequest("BTCUSDT", "Buy", D("0.0004"), order_link_id="x2"), "minimum order qty"),
                     (OrderRequest("XRPUSDT", "Buy", D("1"), "Limit", D("0.5"), order_link_id="x3"),
                      "minNotionalValue")]:
        with pytest.raises(RejectedError, match=why):
            p.place_order(req)
    assert sim.call(lambda: len(sim.engine.orders)) == 0


def test_prices_and_quantities_are_rounded_to_the_instrument_steps(sim):
    p = port_for(sim)
    sim.set_price("ETHUSDT", "3000")
    p.place_order(OrderRequest("ETHUSDT", "Buy", D("0.0789"), take_profit=D("3100.004"), stop_loss=D("2950.006"),
                               order_link_id="r1"))
    pos = p.positions("ETHUSDT")[0]
    assert pos.size == D("0.07") and pos.take_profit == D("3100") and pos.stop_loss == D("2950.01")


def test_1000_orders_under_random_faults_end_as_one_order_or_one_recorded_rejection_each(sim, sqlite_engine):
    p = port_for(sim, timeout=2)
    prices = {"BTCUSDT": "60000", "ETHUSDT": "3000", "SOLUSDT": "150"}
    for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT"): sim.set_price(s, prices[s])
    sim.sim.faults.drop_after_accept, sim.sim.faults.http5xx, sim.sim.faults.rate_limit_burst = 0.1, 0.05, 0.05
    rng = random.Random(5)
    intents = []
    for i in range(1000):
        sym = rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        qty = {"BTCUSDT": D("0.001"), "ETHUSDT": D("0.01"), "SOLUSDT": D("0.1")}[sym]
        bad = rng.random() < 0.02  # a few the exchange must refuse on their merits
        req = OrderRequest(sym, rng.choice(["Buy", "Sell"]), D("100000") if bad else qty,
                           order_link_id=order_link_id(i))
        intents.append(req)
        place_idempotent(sqlite_engine, p, req, "sim", analysis_id=None, backoff=0.001)
    stats = sim.sim.stats
    assert stats["dropped_after_accept"] > 30 and stats["http5xx"] > 10 and stats["rate_limited"] > 10
    with sqlite_engine.connect() as c:
        rows = c.execute(sa.select(Order.client_order_id, Order.status, Order.reject_reason,
                                   Order.exchange_order_id)).fetchall()
    assert len(rows) == 1000
    on_exchange = sim.call(lambda: {o["orderLinkId"]: o["orderId"] for o in sim.engine.orders.values()})
    assert len(on_exchange) == len(sim.engine.orders)  # no orderLinkId twice on the exchange
    for link, status, reason, oid in rows:
        if link in on_exchange:
            assert status in ("accepted", "filled") and oid == on_exchange[link]
        else:
            assert status == "rejected" and reason
    assert sum(r[1] == "rejected" for r in rows) >= 10


def test_a_crash_between_accept_and_response_is_recovered_without_a_second_order(sim, tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    eng = make_engine(url)
    from tradelab.migrate import upgrade
    upgrade(eng)
    sim.set_price("BTCUSDT", "60000")
    sim.sim.faults.accept_delay_ms = 5000
    script = textwrap.dedent(f"""
        from tradelab.bybit import BybitPort, make_http
        from tradelab.db import make_engine
        from tradelab.exchange import OrderRequest
        from tradelab.orders import place_idempotent
        from decimal import Decimal
        port = BybitPort(make_http("testnet", "{KEY}", "{SECRET}", "{sim.url}", timeout=30), "sim")
        req = OrderRequest("BTCUSDT", "Buy", Decimal("0.002"), order_link_id="tl-42-entry")
        place_idempotent(make_engine("{url}"), port, req, "sim", analysis_id=None)
        print("finished")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90  # a loaded machine imports slowly; a hang still fails
    while time.time() < deadline and not sim.call(lambda: "tl-42-entry" in sim.engine.by_link):
        time.sleep(0.05)
    assert sim.call(lambda: "tl-42-entry" in sim.engine.by_link), proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL); proc.wait()  # accepted by the exchange, response never read
    sim.sim.faults.accept_delay_ms = 0
    with eng.connect() as c:
        assert c.execute(sa.select(Order.status)).scalar() in ("created", "sending")
    p = port_for(sim)
    out = reconcile(eng, p, "sim")
    assert out["settled"] == 1
    again = place_idempotent(eng, p, OrderRequest("BTCUSDT", "Buy", D("0.002"), order_link_id="tl-42-entry"), "sim")
    assert again.status == "filled" and sim.call(lambda: len(sim.engine.orders)) == 1
    assert out["fills"] == 1


def test_fills_that_happened_while_disconnected_are_recovered_by_reconciliation(sim, engine):
    p = port_for(sim)
    sim.set_price("ETHUSDT", "3000")
    got = []
    ws = BybitWebSocket("private", base_url=sim.url, testnet=False, api_key=KEY, api_secret=SECRET)
    ws.execution_stream(lambda m: got.extend(m["data"]))
    req = OrderRequest("ETHUSDT", "Buy", D("0.5"), take_profit=D("3100"), stop_loss=D("2900"),
                       order_link_id="tl-1-entry")
    place_idempotent(engine, p, req, "sim")
    deadline = time.time() + 5
    while not got and time.time() < deadline: time.sleep(0.02)
    ws.exit()  # the stream drops
    sim.set_price("ETHUSDT", "3150")  # the take profit fills while nobody listens
    assert sim.call(lambda: sim.engine.positions()) == []
    first = reconcile(engine, p, "sim")
    assert first["fills"] == 2  # the entry and the take-profit exit
    assert reconcile(engine, p, "sim")["fills"] == 0  # idempotent
    with engine.connect() as c:
        fills = c.execute(sa.select(Fill.side, Fill.qty, Fill.price).order_by(Fill.executed_at, Fill.id)).fetchall()
    assert [(f[0], D(f[1])) for f in fills] == [("Buy", D("0.5")), ("Sell", D("0.5"))]


def test_an_exchange_order_the_database_does_not_know_is_recorded_and_flagged(sim, sqlite_engine):
    p = port_for(sim)
    sim.set_price("BTCUSDT", "60000")
    sim.call(lambda: sim.engine.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
                                       "price": "50000", "orderLinkId": "manual-1"}))
    out = reconcile(sqlite_engine, p, "sim")
    assert out["unknown_on_db"] == 1 and reconcile(sqlite_engine, p, "sim")["unknown_on_db"] == 0
    with sqlite_engine.connect() as c:
        assert c.execute(sa.select(Order.flags, Order.client_order_id)).one() == ("unknown_on_db", "manual-1")


def test_a_take_profit_close_is_marked_take_profit_through_pybit_from_the_simulator(sim):
    p = port_for(sim)
    sim.set_price("ETHUSDT", "3000")
    p.place_order(OrderRequest("ETHUSDT", "Buy", D("0.5"), take_profit=D("3100"), stop_loss=D("2900"),
                               order_link_id="tp-1"))
    sim.set_price("ETHUSDT", "3101")
    entry, exit_ = p.executions(symbol="ETHUSDT")
    assert (entry.order_link_id, entry.create_type, entry.stop_order_type) == ("tp-1", "CreateByUser", "")
    assert (exit_.stop_order_type, exit_.create_type, exit_.exec_type, exit_.side) == (
        "TakeProfit", "CreateByTakeProfit", "Trade", "Sell")
    assert p.order_by_link_id("ETHUSDT", "tp-1").create_type == "CreateByUser"
    raw = p.http.get_order_history(category="linear", orderId=exit_.order_id)["result"]["list"][0]
    assert (raw["stopOrderType"], raw["createType"], raw["reduceOnly"]) == ("TakeProfit", "CreateByTakeProfit", True)


def test_a_stop_loss_close_is_marked_stop_loss_in_the_private_execution_push(sim):
    p = port_for(sim)
    sim.set_price("BTCUSDT", "60000")
    got = []
    ws = BybitWebSocket("private", base_url=sim.url, testnet=False, api_key=KEY, api_secret=SECRET)
    try:
        ws.execution_stream(lambda m: got.extend(m["data"]))
        subscribed = lambda: any("execution" in w.topics for w in sim.sim.sockets)
        deadline = time.time() + 30
        while not sim.call(subscribed) and time.time() < deadline: time.sleep(0.02)
        p.place_order(OrderRequest("BTCUSDT", "Sell", D("0.01"), stop_loss=D("61000"), order_link_id="sl-1"))
        sim.set_price("BTCUSDT", "61500")
        deadline = time.time() + 30
        while len(got) < 2 and time.time() < deadline: time.sleep(0.02)
    finally: ws.exit()
    assert [(x["stopOrderType"], x["createType"]) for x in got] == [("", "CreateByUser"),
                                                                     ("StopLoss", "CreateByStopLoss")]


def test_a_liquidation_reaches_pybit_as_a_bust_trade_created_by_liquidation(sim):
    p = port_for(sim)
    sim.set_price("SOLUSDT", "150")
    p.set_leverage("SOLUSDT", 50)
    p.place_order(OrderRequest("SOLUSDT", "Buy", D("10"), order_link_id="liq-1"))
    (pos,) = p.positions("SOLUSDT")
    assert pos.leverage == D(50)
    sim.set_price("SOLUSDT", "140")
    (bust,) = [x for x in p.executions(symbol="SOLUSDT") if x.order_link_id != "liq-1"]
    bankruptcy = (pos.avg_price * D("0.98")).quantize(D("0.01"))
    assert (bust.exec_type, bust.create_type, bust.price) == ("BustTrade", "CreateByLiq", bankruptcy)
    assert p.positions("SOLUSDT") == []


def test_failed_requests_and_retries_are_logged_with_ids_never_the_key_or_signature(sim, caplog):
    import logging
    from tradelab.exchange import RetryableError
    caplog.set_level(logging.DEBUG)
    p = port_for(sim)
    p.http.log_requests = True  # pybit then dumps each request's signed headers at DEBUG
    sim.set_price("BTCUSDT", "60000")
    p.place_order(OrderRequest("BTCUSDT", "Buy", D("0.001"), order_link_id="log-1"))
    sim.sim.faults.http5xx = 1.0
    try:
        with pytest.raises(RetryableError):
            p.order_by_link_id("BTCUSDT", "log-1")
    finally: sim.sim.faults.http5xx = 0.0
    text = caplog.text
    assert "'X-BAPI-API-KEY': '***'" in text and "'X-BAPI-SIGN': '***'" in text and KEY not in text
    retries = [r for r in caplog.records if r.name == "tradelab.bybit" and "retry" in r.getMessage()]
    assert len(retries) == 4 and "symbol=BTCUSDT orderLinkId=log-1" in retries[0].getMessage()
    assert any(r.levelname == "ERROR" and "after 4 retries" in r.getMessage() for r in caplog.records)
