"""A small desk for the dashboard's tests and bench: the real tradelab.desk.Desk with a hand-picked set of parts
(bus, the simulator in a thread, the database watcher), a migrated SQLite store, users of each role, and the
dashboard served on a loopback port from its own Tornado loop in a thread, as `tradelab up` does on its main one."""
import asyncio, threading, time
from decimal import Decimal
from pathlib import Path

from sqlalchemy.orm import Session

from tradelab.core import SystemClock
from tradelab.db import Trade, make_engine
from tradelab.desk import Desk, SimPart
from tradelab.events import LocalBus, Watcher
from tradelab.exchange import OrderRequest
from tradelab.migrate import upgrade
from tradelab.orders import place_idempotent, reconcile
from tradelab.settings import Settings, load_env
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET
from tradelab.streams import Streams
from tradelab.trades import sync_trades
from tradelab.venues import make_port

PASSWORD = "correct horse battery"
USERS = {"ann": "admin", "tia": "trader", "vic": "viewer"}


def make_desk(tmp: Path, venue: str = "sim", watcher: bool = True, streams: bool = True) -> Desk:
    """A started desk on a fresh store: the simulator (its handle at desk.sim), a bus, the watcher, the live streams
    (ticks); `venue` is what the desk says it trades ("live" to ask for TOTP codes), orders always go to the
    simulator."""
    engine = make_engine(f"sqlite:///{tmp / 'tradelab.db'}"); upgrade(engine)
    settings = Settings(trading={"venue": venue, "symbols": ["BTCUSDT", "ETHUSDT"]})
    sim = SimPart(); sim.start()
    env = load_env(bybit_base_url=sim.url, database_url="", redis_url="")
    desk = Desk(engine, lambda: settings, env, SystemClock(), environ={})
    desk.data_dir, desk.sim = tmp, sim.handle
    desk.bus = LocalBus(desk.clock)
    desk.port = make_port(engine, env, settings.model_copy(update={"trading": settings.trading.model_copy(
        update={"venue": "sim"})}), desk.clock)
    desk.parts = [("bus", desk.bus), ("simulator", sim)] + ([("watcher", Watcher(engine, desk.bus))] if watcher else [])
    if streams:
        desk.parts.append(("streams", Streams(engine, desk.port, venue, settings.trading.symbols, desk.clock, desk.bus,
                                              base_url=sim.url, api_key=DEFAULT_KEY, api_secret=DEFAULT_SECRET)))
    desk.started = ["simulator"]
    return desk.start()


def add_users(desk, users=USERS, password=PASSWORD) -> dict:
    """Users of each role with the same password; returns {name: role}."""
    from tradelab import auth
    for name, role in users.items(): auth.add_user(desk.engine, name, password, role, "test", desk.clock)
    return dict(users)


def open_position(desk, symbol="BTCUSDT", side="Buy", qty="0.01", price=None) -> int:
    """An open position on the simulator with its trade in the store, the way the cycle opens one; the trade id."""
    if price is not None: desk.sim.set_price(symbol, price)
    with Session(desk.engine) as s, s.begin():
        t = Trade(venue=desk.venue, symbol=symbol, side="LONG" if side == "Buy" else "SHORT", status="pending",
                  qty=Decimal(qty), prompt_version="p@1")
        s.add(t); s.flush(); tid = t.id
    place_idempotent(desk.engine, desk.port, OrderRequest(symbol, side, Decimal(qty), "Market",
                     order_link_id=f"t{tid}-open"), desk.venue, trade_id=tid, clock=desk.clock)
    if desk.part("streams") is None:
        reconcile(desk.engine, desk.port, desk.venue, desk.clock)
        sync_trades(desk.engine, desk.port, desk.venue, desk.clock)
        return tid
    deadline = time.monotonic() + 20  # the private stream records the fill and opens the trade by itself
    while time.monotonic() < deadline:
        with Session(desk.engine) as s:
            if s.get(Trade, tid).status == "open": return tid
        time.sleep(0.1)
    raise AssertionError(f"trade {tid} did not open from the stream's fill within 20 s")


class Served:
    """The dashboard of `desk` on 127.0.0.1 (any free port), served by a Tornado loop in a thread."""
    def __init__(self, desk, extra_routes=(), **server_kw):
        self.desk, self.ready, self.error, self.server_kw = desk, threading.Event(), None, server_kw
        self.thread = threading.Thread(target=self._run, args=(extra_routes,), daemon=True, name="test-dashboard")
        self.thread.start(); self.ready.wait(60)
        if self.error: raise self.error
        self.url = f"http://127.0.0.1:{self.dash.port}"

    def _run(self, extra_routes):
        from tradelab.dashboard import make_server
        import tornado.ioloop
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = tornado.ioloop.IOLoop.current()
        try: self.dash = make_server(self.desk, "127.0.0.1", 0, extra_routes, **self.server_kw).start()
        except Exception as e: self.error = e; self.ready.set(); return
        self.loop.add_callback(self.ready.set)
        self.loop.start()
        self.dash.stop(); self.loop.close(all_fds=True)

    def stop(self):
        self.loop.add_callback(self.loop.stop); self.thread.join(30)


def stop_desk(desk):
    desk.stop(10); desk.engine.dispose()
