"""The Bybit adapter against the simulator's limits and clocks, through pybit: it paces itself by the X-Bapi-Limit
headers, recovers a stale clock, stops on an IP ban, never sends an order twice, and reconciles what Bybit forgot."""
import datetime as dt
import json
import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab.bybit import BybitPort, IpBannedError, make_http, set_time_offset
from tradelab.core import D, ManualClock
from tradelab.db import Order
from tradelab.exchange import OrderRequest
from tradelab.matching import Engine
from tradelab.orders import ABSENT, intent, place_idempotent, reconcile
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, Faults, start_in_thread


@pytest.fixture
def started():
    handles = []
    def start(**kw):
        h = start_in_thread(**kw); handles.append(h)
        return h, BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, h.url), "sim", backoff=0.01)
    yield start
    for h in handles: h.stop()


def test_the_adapter_waits_for_the_reset_before_the_limit_instead_of_earning_10006(started):
    sim, port = started(rate_limits={"order": 3, "read": 4, "position": 3})
    sim.set_price("BTCUSDT", "60000")
    for i in range(7):
        port.place_order(OrderRequest("BTCUSDT", "Buy", D("0.001"), order_link_id=f"pace-{i}"))
    for _ in range(9): port.open_orders("BTCUSDT")
    assert sim.sim.stats["rate_limited"] == 0 and port.calls["paced"] >= 3 and port.calls["retries"] == 0
    assert port.limits.by_path["/v5/order/create"][0] == 3  # the allowance, as the headers said


def test_a_10006_that_comes_anyway_waits_for_the_reset_it_names_and_succeeds(started):
    sim, port = started(faults=Faults(rate_limit_burst=0.5, seed=3))
    for _ in range(6): assert port.equity() == 10000
    assert sim.sim.stats["rate_limited"] > 0 and port.calls["retries"] == sim.sim.stats["rate_limited"]


def test_a_stale_clock_10002_is_recovered_by_a_time_resync(started):
    sim, port = started()
    set_time_offset(-60_000)  # our clock a minute behind the exchange: outside the receive window
    try:
        assert port.equity() == 10000 and port.calls["resyncs"] == 1
        assert port.equity() == 10000 and port.calls["resyncs"] == 1  # the offset holds
    finally:
        set_time_offset(0)


def test_an_ip_ban_stops_every_request_and_says_so(started):
    sim, port = started(ip_limit=(12, 5.0))
    with pytest.raises(IpBannedError, match="banned this IP"):
        for _ in range(30): port.equity()
    seen = sim.sim.stats["requests"]
    with pytest.raises(IpBannedError):
        port.open_orders()
    assert sim.sim.stats["requests"] == seen  # nothing was sent while banned


def test_an_order_is_never_sent_twice_nor_without_its_order_link_id(started, sqlite_engine):
    sim, port = started(faults=Faults(http5xx=0.2, rate_limit_burst=0.2, drop_after_accept=0.2, seed=7))
    sent = []
    def spy(resp, *a, **kw):
        if resp.request.path_url.startswith("/v5/order/create"): sent.append(json.loads(resp.request.body))
    port.http.client.hooks["response"].append(spy)
    sim.set_price("BTCUSDT", "60000")
    links = [f"once-{i}" for i in range(12)]
    for link in links:
        place_idempotent(sqlite_engine, port, OrderRequest("BTCUSDT", "Buy", D("0.001"), order_link_id=link), "sim",
                         backoff=0.01)
    reconcile(sqlite_engine, port, "sim", ManualClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)))
    accepted = sim.call(lambda: [o["orderLinkId"] for o in sim.sim.engine.orders.values()])
    assert sorted(accepted) == sorted(links)  # each intent is one exchange order
    assert sent and all(body.get("orderLinkId") for body in sent)
    with Session(sqlite_engine) as s:
        assert set(s.scalars(sa.select(Order.status))) == {"filled"}


def _forget(engine: Engine, n: int = 501):
    "n closed orders after ours (Bybit's realtime keeps 500), then 8 days (history drops cancelled ones after 24 h)."
    for i in range(n):
        engine.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001", "price": "10000",
                      "orderLinkId": f"filler-{i}"})
        engine.cancel({"orderLinkId": f"filler-{i}"})
    engine.clock.advance(days=8)


def test_an_order_beyond_the_500_window_resolves_as_filled_from_executions_never_as_cancelled(started, sqlite_engine):
    clock = ManualClock(dt.datetime.now(dt.timezone.utc))
    sim, port = started(engine=Engine(clock=clock))
    sim.set_price("BTCUSDT", "60000")
    filled = place_idempotent(sqlite_engine, port, OrderRequest("BTCUSDT", "Buy", D("0.001"), order_link_id="old-1"),
                              "sim", clock=clock)
    assert filled.status == "accepted"  # the acknowledgement says no more
    with Session(sqlite_engine) as s, s.begin():  # and one we hold as accepted that the exchange cancelled unfilled
        req = OrderRequest("BTCUSDT", "Buy", D("0.001"), "Limit", D("10000"), order_link_id="old-2")
        o = intent(req, "sim", clock=clock)
        o.status = "accepted"; s.add(o)
    sim.call(lambda: (sim.sim.engine.place({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
                                            "qty": "0.001", "price": "10000", "orderLinkId": "old-2"}),
                      sim.sim.engine.cancel({"orderLinkId": "old-2"})))
    sim.call(_forget, sim.sim.engine)
    realtime = lambda link: port.http.get_open_orders(category="linear", symbol="BTCUSDT", orderLinkId=link)
    assert realtime("old-1")["result"]["list"] == [] and port.order_by_link_id("BTCUSDT", "old-2") is None
    # and the filled one past what history keeps too (its executions stay): the exchange answers "not found"
    sim.call(lambda e: e.orders.pop(e.by_link.pop("old-1")), sim.sim.engine)
    assert port.order_by_link_id("BTCUSDT", "old-1") is None
    reconcile(sqlite_engine, port, "sim", clock)
    with Session(sqlite_engine) as s:
        got = {o.client_order_id: (o.status, o.flags, o.filled_qty) for o in s.scalars(sa.select(Order))}
    assert got["old-1"] == ("filled", None, D("0.001"))
    assert got["old-2"][:2] == ("accepted", ABSENT)  # not found is not cancelled: left for a person, with the reason
    assert reconcile(sqlite_engine, port, "sim", clock).get("absent_unknown") == 1


def test_a_fill_the_stream_records_during_a_rest_ingest_or_before_the_acknowledgement_is_kept_once(sqlite_engine,
                                                                                                     caplog):
    caplog.set_level(logging.INFO, logger="tradelab.orders")
    from tradelab.orders import ingest_executions
    from tradelab.paper import synthetic_port
    from tradelab.streams import record_execution
    port = synthetic_port(ManualClock("2024-06-01T07:00:00Z"), venue="sim")
    class StreamFirst:  # the private stream records the fill before place_order's answer is handled
        def __getattr__(self, k): return getattr(port, k)
        def place_order(self, req):
            oid = port.place_order(req)
            for x in port.executions(): record_execution(sqlite_engine, x, "sim")
            return oid
    o = place_idempotent(sqlite_engine, StreamFirst(), OrderRequest("BTCUSDT", "Buy", D("0.001"),
                                                                    order_link_id="race-1"), "sim")
    assert o.status == "filled"  # the late acknowledgement did not set it back to accepted
    place_idempotent(sqlite_engine, port, OrderRequest("BTCUSDT", "Buy", D("0.001"), order_link_id="race-2"), "sim")
    x2 = port.executions()[-1]
    raced = []
    def stream_writes_first(conn, cursor, statement, *a):
        if statement.startswith("INSERT INTO fills") and not raced:
            raced.append(None)
            raced[0] = record_execution(sqlite_engine, x2, "sim")  # another connection, committed first
    sa.event.listen(sqlite_engine, "before_cursor_execute", stream_writes_first)
    try: ingest_executions(sqlite_engine, port, "sim")
    finally: sa.event.remove(sqlite_engine, "before_cursor_execute", stream_writes_first)
    with Session(sqlite_engine) as s:
        from tradelab.db import Fill
        assert "recorded concurrently" in caplog.text  # the batch met the stream's row and went one by one
        assert raced == [True] and sorted(s.scalars(sa.select(Fill.exec_id))) == sorted(
            x.exec_id for x in port.executions())
