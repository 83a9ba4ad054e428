"""Exchange layer: order round trip through pybit, simulator REST throughput, WebSocket ticker fan-out.

Run: make bench   (or: .venv/bin/python bench/bench_exchange.py)
The simulator runs as its own process (`tradelab sim`), as a user runs it.
"""
import asyncio, json, os, socket, statistics as stt, subprocess, sys, threading, time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aiohttp
from tradelab.bybit import BybitPort, BybitWebSocket, make_http
from tradelab.exchange import OrderRequest

CMD = "python bench/bench_exchange.py"
KEY, SECRET = "tradelab-sim", "tradelab-sim-secret"
BIN = os.path.join(os.path.dirname(sys.executable), "tradelab")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def start_sim(*extra):
    port = free_port()
    proc = subprocess.Popen([BIN, "sim", "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import requests
    for _ in range(200):
        try:
            requests.get(url + "/sim/health", timeout=0.2); return proc, url
        except Exception: time.sleep(0.05)
    raise RuntimeError(proc.stderr.read().decode())


def pct(xs, q): xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * q))]


def round_trip(url, n=100):
    port = BybitPort(make_http("testnet", KEY, SECRET, url), "sim")
    events, lock = {}, threading.Lock()
    def on_exec(m):
        t = time.perf_counter()
        with lock:
            for x in m["data"]: events.setdefault(x["orderLinkId"], t)
    ws = BybitWebSocket("private", base_url=url, testnet=False, api_key=KEY, api_secret=SECRET)
    ws.execution_stream(on_exec)
    time.sleep(0.3)
    acks, rts = [], []
    for i in range(n):
        link = f"bench-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        port.place_order(OrderRequest("BTCUSDT", "Buy" if i % 2 == 0 else "Sell", Decimal("0.001"), order_link_id=link))
        acks.append((time.perf_counter() - t0) * 1000)
        while link not in events and time.perf_counter() - t0 < 2: time.sleep(0.0002)
        if link in events: rts.append((events[link] - t0) * 1000)
        time.sleep(max(0, 0.11 - (time.perf_counter() - t0)))  # under Bybit's 10 orders/s per account
    ws.exit()
    print("order round trip (place -> ack -> execution event) through pybit: "
          f"p50 {pct(rts, .5):.1f} ms, p99 {pct(rts, .99):.1f} ms "
          f"over {len(rts)} orders at 9/s (the account limit is 10/s); ack alone p50 {pct(acks, .5):.1f} ms")


async def rest_throughput(url, seconds=3.0, conc=32):
    done = 0
    async with aiohttp.ClientSession() as s:
        stop = time.perf_counter() + seconds
        async def worker():
            nonlocal done
            while time.perf_counter() < stop:
                async with s.get(url + "/v5/market/tickers", params={"category": "linear", "symbol": "BTCUSDT"}) as r:
                    await r.read(); done += 1
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conc)])
        el = time.perf_counter() - t0
    print(f"simulator REST throughput: {done / el:,.0f} requests/s "
          f"(GET /v5/market/tickers, {conc} concurrent aiohttp clients, {seconds:.0f} s)")


async def fanout(url, clients=50, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"), seconds=5.0):
    lat, counts = [], [0] * clients
    ws_url = url.replace("http", "ws") + "/v5/public/linear"
    async with aiohttp.ClientSession() as s:
        async def client(i):
            async with s.ws_connect(ws_url) as ws:
                sub = {"op": "subscribe", "req_id": str(i), "args": [f"tickers.{x}" for x in symbols]}
                await ws.send_str(json.dumps(sub))
                stop = time.time() + seconds
                while time.time() < stop:
                    try: msg = await asyncio.wait_for(ws.receive(), timeout=stop - time.time())
                    except asyncio.TimeoutError: break
                    m = json.loads(msg.data)
                    if "topic" in m:
                        lat.append(time.time() * 1000 - m["ts"]); counts[i] += 1
        await asyncio.gather(*[client(i) for i in range(clients)])
    rate = stt.mean(counts) / seconds
    print(f"WebSocket ticker fan-out: {clients} clients x {len(symbols)} symbols, {rate:.1f} messages/s per client, "
          f"delivery p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms ({len(lat):,} messages)")


def main():
    print(f"== {CMD}")
    proc, url = start_sim("--speed", "60")
    try:
        round_trip(url)
        asyncio.run(rest_throughput(url))
        asyncio.run(fanout(url))
    finally:
        proc.terminate(); proc.wait(5)


if __name__ == "__main__":
    main()
