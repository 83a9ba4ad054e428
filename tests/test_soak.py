"""Fault soak: order intents and stream drops through pybit against the simulator with faults injected.

The short version runs here (about 100 intents, 5 drops of 1-3 s); `make soak` runs `tools/soak.py`, which calls
the same functions with the full figures (1,000 intents, 50 drops of 1-30 s) and prints them.
"""
import asyncio, collections, datetime as dt, os, random, threading, time
import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session
from yarl import URL
from tradelab.bybit import BybitPort, make_http, set_time_offset
from tradelab.core import D, SystemClock
from tradelab.db import Fill, Order
from tradelab.exchange import ExchangeError, OrderRequest
from tradelab.orders import IN_DOUBT, intent, order_link_id, place_idempotent, reconcile, send_intent
from tradelab.simulator import DEFAULT_KEY, DEFAULT_SECRET, Faults, start_in_thread
from tradelab.streams import Streams

FULL = os.environ.get("TRADELAB_SOAK") == "full"
LIMITS = {"order": 1_000_000, "read": 1_000_000, "position": 1_000_000}
PRICES = {"BTCUSDT": "60000", "ETHUSDT": "3000", "SOLUSDT": "150"}
QTY = {"BTCUSDT": D("0.001"), "ETHUSDT": D("0.01"), "SOLUSDT": D("0.1")}
STATUS = {"Filled": "filled", "New": "accepted", "PartiallyFilled": "accepted", "Cancelled": "cancelled",
          "Rejected": "rejected", "Deactivated": "cancelled"}


def until(f, timeout=10.0, every=0.02):
    """Poll `f` until it is truthy or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while not (v := f()) and time.monotonic() < deadline: time.sleep(every)
    return v


class Later(SystemClock):
    """The wall clock moved on by `ahead` seconds: a reconcile run after every in-doubt intent's grace."""
    def __init__(self, ahead=60): self.ahead = dt.timedelta(seconds=ahead)
    def now(self): return super().now() + self.ahead


def _passed(headers) -> dict:
    """The headers a gateway passes on: Bybit's own and the content type."""
    return {k: v for k, v in headers.items() if k.lower().startswith("x-bapi") or k.lower() == "content-type"}


class Gateway:
    """A gateway in front of the simulator: after the exchange accepted an order it may answer 502 instead (5xx after
    commit), and it passes on a dropped connection as a dropped connection."""
    def __init__(self, upstream: str, p: float = 0.0, seed: int = 0):
        self.upstream, self.p, self.rng, self.hits = upstream, p, random.Random(seed), 0
        self.loop, self.ready = asyncio.new_event_loop(), threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="soak-gateway")

    async def _handle(self, request):
        body = await request.read()
        fwd = _passed(request.headers)
        try:
            async with self.session.request(request.method, URL(self.upstream + request.raw_path, encoded=True),
                                            headers=fwd, data=body) as r:
                data, status = await r.read(), r.status
                keep = _passed(r.headers)
        except aiohttp.ClientError:  # the exchange dropped the answer: so do we
            request.transport.close()
            raise ConnectionResetError("upstream dropped the response")
        if request.path == "/v5/order/create" and status == 200 and b'"retCode": 0' in data.replace(b'":0', b'": 0') \
                and self.rng.random() < self.p:
            self.hits += 1
            return web.Response(status=502, text="bad gateway (injected after the exchange accepted the order)")
        return web.Response(body=data, status=status, headers=keep)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        async def boot():
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            app = web.Application(); app.router.add_route("*", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app, access_log=None); await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0); await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
        self.loop.run_until_complete(boot()); self.ready.set(); self.loop.run_forever()

    url = property(lambda self: f"http://127.0.0.1:{self.port}")

    def start(self):
        self.thread.start(); self.ready.wait(10); return self

    def stop(self):
        async def down():
            await self.session.close(); await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop); self.thread.join(10)


def _intents(n: int, seed: int) -> list[OrderRequest]:
    """`n` seeded intents: mostly market orders, some resting limits far from the price, a few the exchange refuses."""
    rng, out = random.Random(seed), []
    for i in range(n):
        sym, side, r = rng.choice(list(PRICES)), rng.choice(["Buy", "Sell"]), rng.random()
        if r < 0.03: out.append(OrderRequest(sym, side, D("100000"), order_link_id=order_link_id(i, "soak")))
        elif r < 0.3:
            px = D(PRICES[sym]) * (D("0.5") if side == "Buy" else D("1.5"))
            out.append(OrderRequest(sym, side, QTY[sym], "Limit", px, order_link_id=order_link_id(i, "soak")))
        else: out.append(OrderRequest(sym, side, QTY[sym], order_link_id=order_link_id(i, "soak")))
    return out


def _send_all(engine, port, reqs, skew_every: int) -> int:
    """Record each intent, then send it at most once (the cycle's path); every `skew_every`-th the clock jumps."""
    skews = 0
    for i, req in enumerate(reqs):
        if skew_every and i % skew_every == skew_every - 1:
            set_time_offset(-30_000); skews += 1  # our clock 30 s behind: the next signed request gets 10002
        with Session(engine) as s, s.begin(): s.add(intent(req, "sim", "manual"))
        try: send_intent(engine, port, req.order_link_id, doubtful=False, backoff=0.001)
        except ExchangeError: pass  # left in doubt: reconcile settles it
    return skews


def _exchange_orders(sim) -> list[dict]:
    return sim.call(lambda: [dict(o) for o in sim.engine.orders.values()])


def _db(engine):
    with Session(engine) as s:
        orders = s.execute(sa.select(Order.client_order_id, Order.status, Order.reject_reason, Order.exchange_order_id,
                                     Order.filled_qty)).all()
        fills = s.scalars(sa.select(Fill.exec_id)).all()
    return orders, fills


def audit_orders(engine, sim, reqs) -> dict:
    """Duplicates, lost intents and database-vs-exchange mismatches after the run."""
    orders, fills = _db(engine)
    ex = _exchange_orders(sim)
    ex_links = collections.Counter(o["orderLinkId"] for o in ex)
    by_link = {o["orderLinkId"]: o for o in ex}
    db = {r[0]: r for r in orders}
    ours = {r.order_link_id for r in reqs}
    dup = sum(c - 1 for link, c in ex_links.items() if link and c > 1) + (len(orders) - len(db))
    lost, mismatched = [], []
    for link in ours:
        row, o = db.get(link), by_link.get(link)
        if row is None or row[1] in IN_DOUBT: lost.append((link, row and row[1])); continue
        if o is None:
            if row[1] != "rejected" or not row[2]: lost.append((link, row[1]))
        elif row[3] != o["orderId"] or row[1] != STATUS[o["orderStatus"]] or D(row[4] or 0) != D(o["cumExecQty"]):
            mismatched.append((link, row[1:], o["orderStatus"], o["cumExecQty"]))
    execs = sim.call(lambda: [x["execId"] for x in sim.engine.execs])
    return {"intents": len(reqs), "on_exchange": sum(1 for link in ours if link in by_link),
            "rejected": sum(1 for link in ours if db.get(link) and db[link][1] == "rejected"),
            "duplicates": dup, "lost": len(lost), "mismatched": len(mismatched),
            "stray_on_exchange": sum(1 for o in ex if o["orderLinkId"] not in ours),
            "fills_missing": len(set(execs) - set(fills)), "fills_extra": len(set(fills) - set(execs)),
            "examples": (lost + mismatched)[:5]}


def order_soak(engine, n: int, seed: int = 7, drop=0.1, http5xx=0.05, after_5xx=0.05, rate_limit=0.05,
               skew_every: int = 40) -> dict:
    """`n` intents through pybit -> gateway -> simulator under faults, then one reconcile; the audit's figures."""
    t0 = time.monotonic()
    sim = start_in_thread(rate_limits=LIMITS, faults=Faults(drop_after_accept=drop, http5xx=http5xx,
                                                            rate_limit_burst=rate_limit, seed=seed))
    gw = Gateway(sim.url, after_5xx, seed).start()
    try:
        for s, px in PRICES.items(): sim.set_price(s, px)
        port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, gw.url, timeout=2), "sim", backoff=0.001)
        reqs = _intents(n, seed)
        skews = _send_all(engine, port, reqs, skew_every)
        in_doubt = len([r for r in _db(engine)[0] if r[1] in IN_DOUBT])
        sim.faults.drop_after_accept = sim.faults.http5xx = sim.faults.rate_limit_burst = 0.0; gw.p = 0.0
        reconcile(engine, port, "sim", Later())  # the exchange is healthy again; every grace has passed
        out = audit_orders(engine, sim, reqs)
        st = sim.sim.stats
        out.update(injected={"timeout_after_commit": st["dropped_after_accept"], "5xx_before_commit": st["http5xx"],
                             "5xx_after_commit": gw.hits, "10006": st["rate_limited"], "10002": skews},
                   resyncs=port.calls["resyncs"], in_doubt_before_reconcile=in_doubt,
                   seconds=round(time.monotonic() - t0, 1))
        return out
    finally:
        set_time_offset(0); gw.stop(); sim.stop()


def _flat_order(engine, port, i: int, sym: str, side: str, tag: str):
    req = OrderRequest(sym, side, QTY[sym], order_link_id=order_link_id(i, tag))
    try: place_idempotent(engine, port, req, "sim", backoff=0.001)
    except ExchangeError: pass  # its fill still happened or not: the stream/reconcile must say which


def stream_soak(engine, drops: int, lo: float, hi: float, seed: int = 3) -> dict:
    """Fills before, during and after `drops` socket drops of lo..hi s: every execution recorded once by the stream."""
    t0, rng = time.monotonic(), random.Random(seed)
    faults = Faults(seed=seed)
    if hasattr(faults, "ws_duplicate"): faults.ws_duplicate = 0.2  # the exchange pushes some messages twice
    sim = start_in_thread(tick_seconds=0.1, rate_limits=LIMITS, faults=faults)
    for s in ("BTCUSDT", "ETHUSDT"): sim.set_price(s, PRICES[s])
    port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url, timeout=5), "sim", backoff=0.01)
    live = Streams(engine, port, "sim", ["BTCUSDT", "ETHUSDT"], base_url=sim.url, api_key=DEFAULT_KEY,
                   api_secret=DEFAULT_SECRET).start()
    k, outages = 0, []
    try:
        assert until(lambda: live.state()["ok"], 30), live.state()
        for d in range(drops):
            secs = rng.uniform(lo, hi)
            sym = rng.choice(["BTCUSDT", "ETHUSDT"])
            _flat_order(engine, port, k, sym, "Buy", "drop"); k += 1  # its push is in flight as the socket drops
            sim.drop_sockets(refuse_for=secs); gone = time.monotonic()
            _flat_order(engine, port, k, sym, "Sell", "drop"); k += 1  # fills while nobody listens
            time.sleep(secs / 2)
            _flat_order(engine, port, k, sym, "Buy", "drop"); k += 1
            assert until(lambda: live.state()["ok"], secs + 60), live.state()
            outages.append(time.monotonic() - gone)
            _flat_order(engine, port, k, sym, "Sell", "drop"); k += 1  # pushed on the new socket
            sim.call(lambda: sim.sim._on_event("execution", [dict(sim.engine.execs[-2])]))  # an old one, again
        execs = sim.call(lambda: [(x["execId"], x["orderLinkId"]) for x in sim.engine.execs])
        until(lambda: len(_db(engine)[1]) >= len(execs), 30)
        orders, fills = _db(engine)
        ex = {o["orderLinkId"]: o for o in _exchange_orders(sim)}
        overfilled = [r[0] for r in orders if r[0] in ex and D(r[4] or 0) != D(ex[r[0]]["cumExecQty"])]
        return {"drops": drops, "drop_seconds": f"{lo:g}-{hi:g}", "orders": k, "executions": len(execs),
                "fills_missed": len({e for e, _ in execs} - set(fills)),
                "fills_applied_twice": len(fills) - len(set(fills)) + len(overfilled),
                "pushed_twice": sim.sim.stats.get("ws_duplicated", "n/a"), "repushed_after_reconnect": drops,
                "pushed": live.counts["fills"], "reconnects": live.counts["reconnects"],
                "resyncs": live.counts["resyncs"], "longest_outage_s": round(max(outages, default=0), 1),
                "seconds": round(time.monotonic() - t0, 1)}
    finally:
        live.stop(); sim.stop()


def test_order_intents_under_timeouts_5xx_10002_and_10006_end_as_one_exchange_order_or_one_rejection(sqlite_engine):
    out = order_soak(sqlite_engine, 1000 if FULL else 100, after_5xx=0.05 if FULL else 0.1)
    inj = out["injected"]
    assert inj["timeout_after_commit"] and inj["5xx_before_commit"] and inj["5xx_after_commit"] and inj["10006"], out
    assert inj["10002"] and out["resyncs"] >= inj["10002"], out
    assert out["duplicates"] == 0 and out["lost"] == 0 and out["stray_on_exchange"] == 0, out
    assert out["mismatched"] == 0 and out["fills_missing"] == 0 and out["fills_extra"] == 0, out
    assert out["on_exchange"] + out["rejected"] == out["intents"] and out["rejected"] >= 1, out


def test_fills_during_stream_drops_are_recorded_once_each(sqlite_engine):
    out = stream_soak(sqlite_engine, 50 if FULL else 5, 1 if FULL else 1, 30 if FULL else 3)
    assert out["fills_missed"] == 0 and out["fills_applied_twice"] == 0, out
    assert out["reconnects"] >= out["drops"] and out["executions"] == out["orders"], out
    assert out["pushed"] > 0, out  # some fills came by push, the rest by the resync after each reconnect


def test_a_filled_order_pushed_out_of_the_500_order_window_is_not_marked_cancelled(sqlite_engine):
    from tradelab.db import Trade
    from tradelab.trades import sync_trades
    sim = start_in_thread(rate_limits=LIMITS)
    try:
        sim.set_price("BTCUSDT", "60000")
        port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url, timeout=5), "sim", backoff=0.01)
        with Session(sqlite_engine, expire_on_commit=False) as s, s.begin():
            t = Trade(venue="sim", symbol="BTCUSDT", side="LONG", status="pending"); s.add(t)
        entry = OrderRequest("BTCUSDT", "Buy", D("0.01"), "Limit", D("59000"), order_link_id="w-entry")
        assert place_idempotent(sqlite_engine, port, entry, "sim", trade_id=t.id).status == "accepted"
        sim.set_price("BTCUSDT", "58900")  # it fills while nobody looks; then 510 more orders close after it
        sim.call(lambda: [sim.engine.place({"symbol": "BTCUSDT", "side": "Sell" if i % 2 else "Buy",
                                            "orderType": "Market", "qty": "0.001", "orderLinkId": f"w-{i}"})
                          for i in range(510)])
        realtime = port.http.get_open_orders(category="linear", symbol="BTCUSDT", orderLinkId="w-entry")
        if realtime["result"]["list"]:
            pytest.xfail("the simulator still lists every closed order on /v5/order/realtime (the 500-order window, "
                         "FIDA's part of issue 14, has not landed)")
        reconcile(sqlite_engine, port, "sim"); sync_trades(sqlite_engine, port, "sim", SystemClock())
        with Session(sqlite_engine) as s:
            o = s.scalars(sa.select(Order).where(Order.client_order_id == "w-entry")).one()
            assert (o.status, o.filled_qty) == ("filled", D("0.01")) and s.get(Trade, t.id).status == "open"
    finally:
        sim.stop()


def test_more_than_100_executions_in_one_millisecond_are_all_ingested(sqlite_engine):
    from tradelab.core import ManualClock
    from tradelab.matching import Engine
    sim = start_in_thread(engine=Engine(clock=ManualClock(SystemClock().now())), rate_limits=LIMITS)
    try:
        sim.set_price("BTCUSDT", "60000")  # a frozen exchange clock: one big sweep's executions share their time
        sim.call(lambda: [sim.engine.place({"symbol": "BTCUSDT", "side": "Sell" if i % 2 else "Buy",
                                            "orderType": "Market", "qty": "0.001", "orderLinkId": f"ms-{i}"})
                          for i in range(150)])
        port = BybitPort(make_http("testnet", DEFAULT_KEY, DEFAULT_SECRET, sim.url, timeout=5), "sim", backoff=0.01)
        assert reconcile(sqlite_engine, port, "sim")["fills"] == 150
    finally:
        sim.stop()
