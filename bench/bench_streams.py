"""Live streams: a fill on the exchange -> its trade updated in the database, through the private WebSocket.

Run: make bench   (or: .venv/bin/python bench/bench_streams.py)
The simulator runs as its own process (`tradelab sim`), the database is a SQLite file, and no cycle runs: the
trade moves only because `tradelab.streams.Streams` recorded the pushed execution and synced the trade.
Each sample is timed from just before the order is sent (the fill happens while the exchange handles it) until
the trade's new status is visible in the database, so it includes the REST order round trip (shown apart).
"""
import os, statistics as stt, subprocess, sys, tempfile, time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import requests
from sqlalchemy.orm import Session
from tradelab.bybit import BybitPort, make_http
from tradelab.db import Trade, make_engine
from tradelab.exchange import OrderRequest
from tradelab.migrate import upgrade
from tradelab.orders import intent
from tradelab.streams import Streams
from bench_exchange import KEY, SECRET, free_port, pct  # noqa: E402 (the benches share the simulator helpers)

CMD = "python bench/bench_streams.py"
BIN = os.path.join(os.path.dirname(sys.executable), "tradelab")
N = 30


def start_sim():
    port = free_port()
    proc = subprocess.Popen([BIN, "sim", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try: requests.get(url + "/sim/health", timeout=0.2); return proc, url
        except Exception: time.sleep(0.05)
    proc.kill(); raise RuntimeError("tradelab sim did not start")


def status(engine, tid):
    with Session(engine) as s: return s.get(Trade, tid).status


def one_fill(engine, port, i, tid):
    "Send the entry (even i: a new pending trade) or the close (odd i); seconds until the trade moved, and the ack."
    entry = i % 2 == 0
    if entry:
        with Session(engine, expire_on_commit=False) as s, s.begin():
            t = Trade(venue="sim", symbol="BTCUSDT", side="LONG", status="pending"); s.add(t); s.flush(); tid = t.id
    req = OrderRequest("BTCUSDT", "Buy" if entry else "Sell", Decimal("0.001"), reduce_only=not entry,
                       order_link_id=f"bench-st-{os.getpid()}-{i}")
    with Session(engine) as s, s.begin(): s.add(intent(req, "sim", "entry" if entry else "close", trade_id=tid))
    want = "open" if entry else "closed"
    t0 = time.perf_counter()
    port.place_order(req)
    ack = time.perf_counter() - t0
    while status(engine, tid) != want and time.perf_counter() - t0 < 10: time.sleep(0.002)
    return time.perf_counter() - t0, ack, tid


def main():
    proc, url = start_sim()
    tmp = tempfile.mkdtemp()
    engine = make_engine(f"sqlite:///{tmp}/bench.db"); upgrade(engine)
    requests.post(url + "/sim/price", json={"symbol": "BTCUSDT", "price": "60000"})
    port = BybitPort(make_http("testnet", KEY, SECRET, url), "sim")
    st = Streams(engine, port, "sim", ["BTCUSDT"], base_url=url, api_key=KEY, api_secret=SECRET).start()
    try:
        t0 = time.perf_counter()
        while not st.state()["ok"] and time.perf_counter() - t0 < 20: time.sleep(0.02)
        lat, acks, tid = [], [], None
        for i in range(N):
            s, a, tid = one_fill(engine, port, i, tid)
            lat.append(s * 1000); acks.append(a * 1000)
            time.sleep(0.15)  # under Bybit's 10 orders/s
        moved = st.counts["fills"]
    finally:
        st.stop(); proc.terminate(); proc.wait(10)
    print(f"fill on the exchange -> trade updated in the database (SQLite, private WebSocket, no cycle): "
          f"p50 {stt.median(lat):.0f} ms, p95 {pct(lat, .95):.0f} ms, max {max(lat):.0f} ms over {N} fills "
          f"({moved} recorded from pushes; aim p95 <= 1000 ms); the REST order ack inside it: p50 "
          f"{stt.median(acks):.0f} ms  [{CMD}]")


if __name__ == "__main__":
    main()
