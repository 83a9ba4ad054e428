"""Live streams through the real pybit WebSocket client over loopback to the built-in V5 simulator."""
import threading, time
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.bybit import BybitPort, make_http
from tradelab.core import D
from tradelab.db import Fill, Order, Trade
from tradelab.events import LocalBus
from tradelab.exchange import Execution, OrderRequest
from tradelab.orders import place_idempotent, reconcile
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, start_in_thread
from tradelab.streams import Streams, record_execution

LIMITS = {"order": 100_000, "read": 100_000, "position": 100_000}


def until(f, timeout=10.0):
    """Poll `f` until it is truthy or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while not (v := f()) and time.monotonic() < deadline: time.sleep(0.01)
    return v


@pytest.fixture
def sim():
    h = start_in_thread(tick_seconds=0.1, rate_limits=LIMITS)
    h.set_price("BTCUSDT", "60000"); h.set_price("ETHUSDT", "3000")
    yield h
    h.stop()


@pytest.fixture
def port(sim):
    return BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url, timeout=5), "sim", backoff=0.01)


@pytest.fixture
def bus():
    b = LocalBus().start()
    b.seen = []
    b.subscribe(b.seen.append)
    yield b
    b.stop()


def streams_for(engine, port, sim, bus=None, secret=DEFAULT_SECRET):
    return Streams(engine, port, "sim", ["BTCUSDT", "ETHUSDT"], bus=bus, base_url=sim.url, api_key=DEFAULT_KEY,
                   api_secret=secret)


@pytest.fixture
def live(sqlite_engine, port, sim, bus):
    s = streams_for(sqlite_engine, port, sim, bus).start()
    assert until(lambda: s.state()["ok"]), s.state()
    yield s
    s.stop()


def pending_trade(engine, symbol="BTCUSDT", side="LONG") -> int:
    with Session(engine, expire_on_commit=False) as s, s.begin():
        t = Trade(venue="sim", symbol=symbol, side=side, status="pending"); s.add(t)
    return t.id


def trade(engine, tid) -> Trade:
    with Session(engine) as s: return s.get(Trade, tid)


def fills(engine, **where) -> list[Fill]:
    with Session(engine) as s:
        return s.scalars(sa.select(Fill).where(*(getattr(Fill, k) == v for k, v in where.items()))).all()


def test_a_fill_pushed_on_the_stream_is_recorded_once_and_updates_its_trade_without_a_cycle(live, sqlite_engine, port,
                                                                                            bus):
    tid = pending_trade(sqlite_engine)
    place_idempotent(sqlite_engine, port, OrderRequest("BTCUSDT", "Buy", D("0.01"), order_link_id="s-entry"), "sim",
                     trade_id=tid)
    assert until(lambda: trade(sqlite_engine, tid).status == "open")
    t = trade(sqlite_engine, tid)
    assert t.entry_price == D("60003") and t.qty == D("0.01")  # the touch: 60000 plus half the spread
    assert len(fills(sqlite_engine, client_order_id="s-entry")) == 1
    close = OrderRequest("BTCUSDT", "Sell", D("0.01"), reduce_only=True, order_link_id="s-close")
    place_idempotent(sqlite_engine, port, close, "sim", trade_id=tid, purpose="close")
    assert until(lambda: trade(sqlite_engine, tid).status == "closed")
    t = trade(sqlite_engine, tid)
    assert t.close_reason == "manual" and t.exit_price == D("59997") and t.pnl < 0
    assert live.counts["fills"] == 2 and live.counts["resyncs"] == 1  # pushed, not pulled over REST
    assert until(lambda: [e.data["symbol"] for e in bus.seen if e.kind == "fill.recorded"] == ["BTCUSDT"] * 2)
    with Session(sqlite_engine) as s:
        o = s.scalars(sa.select(Order).where(Order.client_order_id == "s-entry")).one()
        assert o.filled_qty == D("0.01") and o.exchange_order_id


def test_the_same_execution_pushed_twice_and_ingested_over_rest_is_stored_once(live, sqlite_engine, port, sim):
    place_idempotent(sqlite_engine, port, OrderRequest("ETHUSDT", "Buy", D("0.1"), order_link_id="s-dup"), "sim")
    assert until(lambda: len(fills(sqlite_engine, client_order_id="s-dup")) == 1)
    ex = dict(sim.engine.execs[-1])
    seen = live.counts["messages"]
    sim.call(sim.sim._on_event, "execution", [ex])  # the exchange says it again
    assert until(lambda: live.counts["messages"] > seen)
    assert reconcile(sqlite_engine, port, "sim")["fills"] == 0  # and a cycle pulls it over REST
    assert len(fills(sqlite_engine, exec_id=ex["execId"])) == 1 and live.counts["fills"] == 1
    with Session(sqlite_engine) as s:
        assert s.scalars(sa.select(Order.filled_qty).where(Order.client_order_id == "s-dup")).one() == D("0.1")


def test_an_execution_ingested_over_rest_first_is_not_recorded_again_from_the_stream(sqlite_engine, port, sim):
    place_idempotent(sqlite_engine, port, OrderRequest("ETHUSDT", "Buy", D("0.1"), order_link_id="s-rest"), "sim")
    assert reconcile(sqlite_engine, port, "sim")["fills"] == 1  # a cycle got there first
    s = streams_for(sqlite_engine, port, sim).start()
    try:
        assert until(lambda: s.state()["ok"])
        seen = s.counts["messages"]
        sim.call(sim.sim._on_event, "execution", [dict(sim.engine.execs[-1])])
        assert until(lambda: s.counts["messages"] > seen)
        assert s.counts["fills"] == 0 and len(fills(sqlite_engine, client_order_id="s-rest")) == 1
    finally:
        s.stop()


def test_two_processes_recording_the_same_execution_at_once_store_it_once(engine):
    x = Execution("race-1", "oid-race", "", "BTCUSDT", "Buy", D("0.001"), D(60000), D("0.03"), False, 1717200000000)
    barrier, won = threading.Barrier(4), []
    def record():
        barrier.wait(); won.append(record_execution(engine, x, "sim"))
    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join(30)
    assert sorted(won) == [False, False, False, True] and len(fills(engine, exec_id="race-1")) == 1


def test_a_ticker_moves_the_mark_and_says_tick(live, sim, bus):
    sim.set_price("ETHUSDT", "3100")
    assert until(lambda: live.marks.get("ETHUSDT") == D(3100))
    assert until(lambda: any(e.kind == "tick" and e.data == {"symbol": "ETHUSDT", "mark": "3100"} for e in bus.seen))
    assert live.marks["BTCUSDT"] == D(60000) and live.state()["lag_s"] < 60


def test_after_the_sockets_drop_the_stream_reconnects_reauthenticates_resubscribes_and_resyncs(live, sqlite_engine,
                                                                                              port, sim, bus):
    tid = pending_trade(sqlite_engine, "ETHUSDT")
    assert sim.drop_sockets(refuse_for=1.0) == 2  # public and private; no new socket for a second
    place_idempotent(sqlite_engine, port, OrderRequest("ETHUSDT", "Buy", D("0.1"), order_link_id="s-away"), "sim",
                     trade_id=tid)  # fills while nobody listens: no push will ever carry it
    assert until(lambda: trade(sqlite_engine, tid).status == "open")  # the resync over REST brought it in
    assert until(lambda: live.state()["ok"]) and live.counts["resyncs"] == 2 and live.counts["reconnects"] == 2
    assert len(fills(sqlite_engine, client_order_id="s-away")) == 1 and live.counts["fills"] == 0
    bus.flush()
    said = [(e.kind, e.data["channel"]) for e in bus.seen if e.kind.startswith("stream.")]
    for ch in ("public", "private"):
        assert [k for k, c in said if c == ch] == ["stream.lost", "stream.restored"]
    private = [ws for ws in sim.sim.sockets if ws.private]
    assert len(private) == 1 and private[0].authed and private[0].topics == {"order", "execution", "position"}
    place_idempotent(sqlite_engine, port, OrderRequest("ETHUSDT", "Sell", D("0.1"), reduce_only=True,
                                                       order_link_id="s-back"), "sim", trade_id=tid, purpose="close")
    assert until(lambda: trade(sqlite_engine, tid).status == "closed")  # pushed again after the resubscribe
    assert live.counts["fills"] == 1


def test_a_refused_key_keeps_the_private_channel_down_and_says_why(sqlite_engine, port, sim):
    s = streams_for(sqlite_engine, port, sim, secret="wrong").start()
    try:
        assert until(lambda: s.state()["public"] and "Authorization" in (s.links["private"].error or ""))
        st = s.state()
        assert st["ok"] is False and st["private"] is False and "wrong" not in str(st)
    finally:
        s.stop()


def test_stop_closes_the_sockets_and_leaves_no_thread_behind(sqlite_engine, port, sim):
    before = set(threading.enumerate())
    s = streams_for(sqlite_engine, port, sim).start()
    assert until(lambda: s.state()["ok"]) and len(sim.sim.sockets) == 2
    s.stop(); s.stop()  # idempotent
    assert until(lambda: not set(threading.enumerate()) - before, 5), set(threading.enumerate()) - before
    assert until(lambda: not sim.sim.sockets, 5) and s.state()["running"] is False
