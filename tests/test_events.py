"""The event bus carries what happened on the desk to every subscriber, in order, once, in-process or over Redis."""
import datetime as dt, inspect, os, socket, subprocess, sys, threading, time, uuid
from decimal import Decimal
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.core import UTC
from tradelab.db import Analysis, Order, PipelineRun, Trade
from tradelab.killswitch import set_halted
from tradelab.events import KINDS, Event, LocalBus, RedisBus, Watcher, client_name, make_bus


def test_subscribers_get_events_on_a_dispatcher_thread_in_publish_order():
    bus, got, threads = LocalBus().start(), [], set()
    bus.subscribe(lambda e: (got.append(e.data["n"]), threads.add(threading.get_ident())))
    for n in range(200): bus.publish("tick", n=n, symbol="BTCUSDT", mark=Decimal("100.5"))
    assert bus.flush(5)
    assert got == list(range(200)) and threading.get_ident() not in threads and len(threads) == 1
    bus.stop()


def test_a_raising_subscriber_is_logged_and_the_others_still_get_every_event(caplog):
    bus, got = LocalBus().start(), []
    bus.subscribe(lambda e: 1 / 0)
    bus.subscribe(got.append)
    bus.publish("trade.opened", trade_id=1); bus.publish("trade.closed", trade_id=1, pnl=Decimal("-3.25"))
    assert bus.flush(5)
    assert [e.kind for e in got] == ["trade.opened", "trade.closed"] and got[1].data["pnl"] == "-3.25"
    assert bus.state()["subscriber_errors"] == 2 and "event subscriber" in caplog.text
    bus.stop()


def test_a_subscriber_for_some_kinds_gets_only_those_and_can_unsubscribe():
    bus, closes = LocalBus().start(), []
    off = bus.subscribe(closes.append, kinds=["trade.closed"])
    bus.publish("trade.opened", trade_id=1); bus.publish("trade.closed", trade_id=1)
    assert bus.flush(5) and [e.kind for e in closes] == ["trade.closed"]
    off(); bus.publish("trade.closed", trade_id=2)
    assert bus.flush(5) and len(closes) == 1
    with pytest.raises(ValueError, match="unknown event kind"): bus.publish("trade.opend")
    bus.stop()


def test_stop_delivers_what_was_published_then_stops_the_thread_and_is_idempotent():
    bus, got = LocalBus(), []
    bus.subscribe(got.append)
    bus.start()
    for _ in range(50): bus.publish("tick")
    bus.stop(); bus.stop()
    assert len(got) == 50 and not bus.state()["running"]
    bus.publish("tick")  # after stop: dropped, no thread comes back
    assert len(got) == 50 and not bus.state()["running"]


def test_an_event_round_trips_through_json_with_money_as_exact_strings():
    e = Event("trade.closed", {"pnl": Decimal("0.1000000001")})
    back = Event.from_json(e.to_json())
    assert back == Event("trade.closed", {"pnl": "0.1000000001"}, e.at, e.id, e.source) and back.kind in KINDS


def test_make_bus_without_redis_is_in_process():
    bus = make_bus(None)
    assert type(bus) is LocalBus and bus.state()["mode"] == "in-process"


# --- Redis ---------------------------------------------------------------------------------------------------------

def _until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end: time.sleep(0.01)
    return cond()


def _channel(): return f"tradelab:events:test:{uuid.uuid4().hex[:8]}"


CHILD = """
import sys
from tradelab.events import RedisBus
bus = RedisBus(sys.argv[1], channel=sys.argv[2]).start()
bus.subscribe(lambda e: print(e.to_json(), flush=True))
print("ready", bus.state()["mode"], flush=True)
bus.publish("desk.started", n=-1)
sys.stdin.read()
bus.stop()
"""


def test_two_processes_on_redis_see_each_others_events_once_each(redis_url):
    ch, mine, theirs = _channel(), [], []
    bus = RedisBus(redis_url, channel=ch).start()
    bus.subscribe(mine.append)
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_url, ch], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["ready", "redis"]
        reader = threading.Thread(target=lambda: theirs.extend(Event.from_json(x) for x in child.stdout), daemon=True)
        reader.start()
        for n in range(5): bus.publish("tick", n=n, symbol="BTCUSDT", mark=Decimal("100.25"))
        assert _until(lambda: len(mine) >= 6 and len(theirs) >= 6) and bus.flush(5)
        child.stdin.close(); child.wait(20); reader.join(5)
    finally:
        child.kill(); child.wait()
        bus.stop()
    assert sorted(e.data["n"] for e in mine) == sorted(e.data["n"] for e in theirs) == [-1, 0, 1, 2, 3, 4]
    assert [e.data["n"] for e in mine if e.kind == "tick"] == [0, 1, 2, 3, 4]  # one publisher's order is kept
    assert sorted(e.id for e in mine) == sorted(e.id for e in theirs)
    assert {e.source for e in mine} == {f"{socket.gethostname()}:{os.getpid()}", f"{socket.gethostname()}:{child.pid}"}
    assert [e.data["mark"] for e in theirs if e.kind == "tick"] == ["100.25"] * 5


def test_connections_killed_on_the_server_fall_back_to_in_process_then_come_back_to_redis(redis_url):
    import redis
    ch, got, other = _channel(), [], []
    bus, peer = RedisBus(redis_url, channel=ch).start(), RedisBus(redis_url, channel=ch).start()
    bus.subscribe(got.append); peer.subscribe(other.append)
    admin = redis.Redis.from_url(redis_url)
    try:
        for c in admin.client_list():
            if c["name"] == client_name(): admin.client_kill_filter(_id=c["id"])
        bus.publish("run.failed", run_id=1, error="kernel died")
        assert _until(lambda: len(got) >= 1) and [e.data["run_id"] for e in got] == [1]
        assert _until(lambda: bus.state()["ok"] and peer.state()["ok"]) and bus.state()["reconnects"] >= 1
        bus.publish("run.finished", run_id=2)
        assert _until(lambda: any(e.kind == "run.finished" for e in other)) and bus.flush(5)
        assert [e.data["run_id"] for e in got] == [1, 2]  # each once
    finally:
        bus.stop(); peer.stop(); admin.close()
    assert not bus.state()["running"]


class _Proxy:
    "A TCP proxy in front of Redis that can be cut (connections dropped, port closed) and restored on the same port."
    def __init__(self, target_port):
        self.target, self.port, self.conns, self.srv = target_port, None, [], None
        self.up()

    def up(self):
        self.srv = socket.socket(); self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", self.port or 0)); self.srv.listen(16); self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.srv,), daemon=True).start()

    def _accept(self, srv):
        while True:
            try: a, _ = srv.accept()
            except OSError: return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for x, y in ((a, b), (b, a)): threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y):
        try:
            while data := x.recv(65536): y.sendall(data)
        except OSError: pass
        for s in (x, y):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass

    def cut(self):
        self.srv.close()
        for c in self.conns:
            try: c.shutdown(socket.SHUT_RDWR); c.close()
            except OSError: pass
        self.conns = []


def test_redis_lost_keeps_events_flowing_in_process_says_so_and_recovers_by_itself(redis_url):
    url = __import__("sqlalchemy").engine.make_url(redis_url)
    proxy = _Proxy(url.port or 6379)
    proxied = f"redis://127.0.0.1:{proxy.port}{url.database and '/' + url.database or ''}"
    ch, got = _channel(), []
    bus = RedisBus(proxied, channel=ch).start()
    bus.subscribe(got.append)
    try:
        assert bus.state()["mode"] == "redis"
        proxy.cut()
        assert _until(lambda: not bus.state()["ok"])
        st = bus.state()
        assert st["mode"] == "in-process" and st["error"] and st["since"] and f":{proxy.port}" in st["url"]
        bus.publish("desk.halted", by="alice", reason="news")
        assert bus.flush(5) and [e.kind for e in got] == ["desk.halted"]
        proxy.up()
        assert _until(lambda: bus.state()["ok"], 10)
        assert bus.state()["mode"] == "redis" and bus.state()["error"] is None and bus.state()["reconnects"] == 1
        bus.publish("desk.resumed", by="alice")
        assert bus.flush(5) and [e.kind for e in got] == ["desk.halted", "desk.resumed"]
    finally:
        bus.stop(); proxy.cut()


def test_a_bus_started_with_redis_unreachable_works_in_process_and_says_why():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]  # a port nobody listens on
    bus, got = make_bus(f"redis://127.0.0.1:{port}/0").start(wait=2), []
    bus.subscribe(got.append)
    bus.publish("desk.started")
    assert bus.flush(5) and [e.kind for e in got] == ["desk.started"]
    st = bus.state()
    bus.stop()
    assert isinstance(bus, RedisBus) and not st["ok"] and st["mode"] == "in-process" and "refused" in st["error"]


# --- the watcher ---------------------------------------------------------------------------------------------------

def story(url, pause):
    """What a trading cycle and an operator do to the database, from their own engine; `pause()` after the halt."""
    import datetime as dt
    from decimal import Decimal
    from sqlalchemy.orm import Session
    from tradelab.core import UTC
    from tradelab.db import Analysis, Order, PipelineRun, Trade, make_engine
    from tradelab.killswitch import set_halted
    eng, now = make_engine(url), lambda: dt.datetime.now(UTC)
    with Session(eng) as s:
        run = PipelineRun(pipeline="trading_cycle", status="running", run_key=f"trading_cycle:60:{url[-6:]}")
        s.add(run); s.commit()
        a = Analysis(symbol="BTCUSDT", timeframe="60", recommendation="LONG", confidence=Decimal("0.75"),
                     prompt_version="p@v2", venue="sim", source="live"); s.add(a); s.commit()
        t = Trade(analysis_id=a.id, venue="sim", symbol="BTCUSDT", side="LONG", status="pending", qty=Decimal("0.01"),
                  prompt_version="p@v2"); s.add(t); s.commit()
        t.status, t.opened_at, t.entry_price = "open", now(), Decimal("65000.5"); s.commit()
        o = Order(client_order_id=f"tl-{t.id}-tpsl", trade_id=t.id, venue="sim", symbol="BTCUSDT", side="Sell",
                  order_type="Limit", qty=Decimal("0.01"), price=Decimal("70000"), status="sending")
        s.add(o); s.commit()
        o.status, o.reject_reason = "rejected", "110017: reduce-only rule not satisfied"; s.commit()
        t.status, t.closed_at, t.exit_price, t.pnl = "closed", now(), Decimal("66000"), Decimal("9.99")
        t.close_reason = "take_profit"; s.commit()
        run.status, run.finished_at, run.duration_ms = "ok", now(), 1234; s.commit()
    set_halted(eng, True, "bob", "flash crash")
    pause()
    set_halted(eng, False, "bob")
    eng.dispose()


WRITER = inspect.getsource(story) + """
import sys
story(sys.argv[1], lambda: (print("halted", flush=True), sys.stdin.readline()))
"""

EXPECTED = ["run.started", "analysis.stored", "trade.opened", "order.rejected", "trade.closed", "run.finished",
            "desk.halted", "desk.resumed"]


def _check_story(got, w):
    assert [e.kind for e in got] == EXPECTED
    ev = {e.kind: e.data for e in got}
    assert ev["trade.closed"]["pnl"] == "9.99" and ev["trade.closed"]["close_reason"] == "take_profit"
    assert ev["trade.closed"]["symbol"] == "BTCUSDT" and ev["trade.closed"]["side"] == "LONG"
    assert ev["trade.opened"]["entry_price"] == "65000.5" and ev["trade.opened"]["prompt_version"] == "p@v2"
    assert ev["analysis.stored"]["recommendation"] == "LONG" and ev["analysis.stored"]["confidence"] == "0.75"
    assert ev["order.rejected"]["error"].startswith("110017") and ev["order.rejected"]["venue"] == "sim"
    assert ev["run.finished"]["run_key"].startswith("trading_cycle:60:") and ev["run.finished"]["duration_ms"] == 1234
    assert ev["desk.halted"] == {"halted": True, "by": "bob", "reason": "flash crash", "at": ev["desk.halted"]["at"]}
    assert ev["trade.opened"]["trade_id"] == ev["trade.closed"]["trade_id"] == ev["order.rejected"]["trade_id"]
    assert w.state()["published"] == len(EXPECTED) and not w.state()["running"]


def test_the_watcher_publishes_what_another_process_changes_in_the_database_once_in_order(sqlite_engine):
    bus, got = LocalBus().start(), []
    bus.subscribe(got.append)
    w = Watcher(sqlite_engine, bus, interval=0.05).start()
    url = sqlite_engine.url.render_as_string(hide_password=False)
    child = subprocess.Popen([sys.executable, "-c", WRITER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "halted"
        assert _until(lambda: any(e.kind == "desk.halted" for e in got), 10)
        child.stdin.write("go\n"); child.stdin.flush()
        assert child.wait(30) == 0
        assert _until(lambda: any(e.kind == "desk.resumed" for e in got), 10)
    finally:
        child.kill(); child.wait(); w.stop(); bus.stop()
    _check_story(got, w)


def test_the_watcher_publishes_what_another_connection_changes_on_postgresql_once_in_order(pg_engine):
    bus, got = LocalBus().start(), []
    bus.subscribe(got.append)
    w = Watcher(pg_engine, bus, interval=0.05).start()
    seen_halt = lambda: _until(lambda: any(e.kind == "desk.halted" for e in got), 10)
    writer = threading.Thread(target=story, args=(pg_engine.url.render_as_string(hide_password=False), seen_halt))
    try:
        writer.start(); writer.join(30)
        assert _until(lambda: any(e.kind == "desk.resumed" for e in got), 10)
    finally:
        w.stop(); bus.stop()
    _check_story(got, w)


def _history(s):
    """A store with a past: closed, open and pending trades, a rejected order, runs, analyses, a halt."""
    now = dt.datetime.now(UTC)
    s.add_all([Analysis(symbol="BTCUSDT", timeframe="60", status="error", reject_reason="down") for _ in range(3)])
    s.add_all([Trade(venue="sim", symbol="BTCUSDT", side="LONG", status="closed", opened_at=now, closed_at=now,
                     pnl=Decimal("-1"), close_reason="stop_loss"),
               Trade(venue="sim", symbol="ETHUSDT", side="SHORT", status="open", opened_at=now),
               Trade(venue="sim", symbol="SOLUSDT", side="LONG", status="pending"),
               Order(client_order_id="old-1", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market",
                     qty=Decimal(1), status="rejected", reject_reason="old"),
               PipelineRun(pipeline="trading_cycle", status="failed", error="boom"),
               PipelineRun(pipeline="trading_cycle", status="running")])
    s.commit()


def test_the_watcher_publishes_nothing_for_history_only_what_changes_after_it_started(engine):
    with Session(engine) as s: _history(s)
    set_halted(engine, True, "alice", "before")
    bus = LocalBus().start()
    w = Watcher(engine, bus)
    assert w.poll_once() == [] and w.poll_once() == []
    with Session(engine) as s:
        eth = s.scalars(sa.select(Trade).where(Trade.symbol == "ETHUSDT")).one()
        sol = s.scalars(sa.select(Trade).where(Trade.symbol == "SOLUSDT")).one()
        run = s.scalars(sa.select(PipelineRun).where(PipelineRun.status == "running")).one()
        eth.status, eth.closed_at, eth.pnl, eth.close_reason = "closed", dt.datetime.now(UTC), Decimal("3"), "manual"
        sol.status, sol.close_reason = "cancelled", "entry_rejected"
        run.status, run.error = "failed", "cell 3 raised"
        s.commit()
    evs = w.poll_once()
    bus.stop()
    assert [(e.kind, e.data.get("symbol") or e.data.get("error")) for e in evs] == \
        [("trade.closed", "ETHUSDT"), ("run.failed", "cell 3 raised")]  # no finish time: the poll's time
    assert w.poll_once() == [] and w.state()["tracked"]["trades"] == 0


def test_history_imports_and_backtests_are_not_desk_events_and_a_burst_is_published_in_batches(sqlite_engine):
    bus = LocalBus().start()
    w = Watcher(sqlite_engine, bus, batch=500)
    w.poll_once()
    with Session(sqlite_engine) as s:
        s.add_all([Analysis(symbol="BTCUSDT", timeframe="60", source="live") for _ in range(1200)])
        s.add_all([Analysis(symbol="BTCUSDT", timeframe="60", source=src) for src in ("legacy", "backtest")])
        s.add_all([Trade(venue=v, symbol="BTCUSDT", side="LONG", status="closed", pnl=Decimal(1),
                         opened_at=dt.datetime.now(UTC)) for v in ("legacy", "backtest")])
        s.commit()
    sizes, ids = [], []
    while evs := w.poll_once(): sizes.append(len(evs)); ids += [e.data["analysis_id"] for e in evs]
    bus.stop()
    assert sizes == [500, 500, 200] and ids == sorted(set(ids)) and len(ids) == 1200


def test_a_row_committed_after_a_newer_one_on_postgresql_is_still_published(pg_engine):
    bus = LocalBus().start()
    w = Watcher(pg_engine, bus)
    w.poll_once()
    slow, fast = Session(pg_engine), Session(pg_engine)
    try:
        slow.add(Analysis(symbol="SLOWUSDT", timeframe="60")); slow.flush()  # takes the lower id, commits later
        fast.add(Analysis(symbol="FASTUSDT", timeframe="60")); fast.commit()
        assert [e.data["symbol"] for e in w.poll_once()] == ["FASTUSDT"]
        slow.commit()
        assert [e.data["symbol"] for e in w.poll_once()] == ["SLOWUSDT"]
        assert w.poll_once() == [] and w.state()["gaps"] == 0
    finally:
        slow.close(); fast.close(); bus.stop()


def test_a_database_that_fails_is_reported_and_the_watcher_carries_on_when_it_is_back(tmp_path):
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(f"sqlite:///{tmp_path}/late.db")  # not migrated yet: every poll fails
    bus, got = LocalBus().start(), []
    bus.subscribe(got.append)
    w = Watcher(eng, bus, interval=0.05).start()
    try:
        st = w.state()
        assert not st["ok"] and st["running"] and "no such table" in st["error"]
        upgrade(eng)
        assert _until(lambda: w.state()["ok"], 10)
        set_halted(eng, True, "carol", "db back")
        assert _until(lambda: [e.kind for e in got] == ["desk.halted"], 10)
    finally:
        w.stop(); bus.stop(); eng.dispose()


def test_two_desks_watching_one_database_over_redis_deliver_each_change_once(engine, redis_url):
    from tradelab.db import make_engine
    ch, seen = _channel(), []
    desk_a, desk_b = RedisBus(redis_url, channel=ch).start(), RedisBus(redis_url, channel=ch).start()
    dashboard = RedisBus(redis_url, channel=ch).start()
    dashboard.subscribe(seen.append)
    other = make_engine(engine.url.render_as_string(hide_password=False))  # the second desk's own engine
    wa, wb = Watcher(engine, desk_a), Watcher(other, desk_b)
    try:
        wa.poll_once(); wb.poll_once()
        with Session(engine) as s:
            s.add(Trade(venue="sim", symbol="BTCUSDT", side="LONG", status="open", opened_at=dt.datetime.now(UTC)))
            s.commit()
        set_halted(engine, True, "alice", "two desks")
        a, b = wa.poll_once(), wb.poll_once()
        assert [e.id for e in a] == [e.id for e in b] and [e.kind for e in a] == ["trade.opened", "desk.halted"]
        desk_a.publish("tick", last="a"); desk_b.publish("tick", last="b")  # each after its own copies
        assert _until(lambda: sum(e.kind == "tick" for e in seen) == 2) and dashboard.flush(5)
        assert [e.kind for e in seen if e.kind != "tick"] == ["trade.opened", "desk.halted"]
    finally:
        desk_a.stop(); desk_b.stop(); dashboard.stop(); other.dispose()
