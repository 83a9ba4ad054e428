"""The event bus carries what happened on the desk to every subscriber, in order, once, in-process or over Redis."""
import os, socket, subprocess, sys, threading, time, uuid
from decimal import Decimal
import pytest
from tradelab.events import KINDS, Event, LocalBus, RedisBus, client_name, make_bus


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
