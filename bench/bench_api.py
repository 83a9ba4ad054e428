"""JSON API reads under load: p50/p95/p99 of GET status, positions and trades with 50 concurrent clients.

The store holds 10,000 trades and 50,000 analyses (SQLite); the API and the simulator run in one child process,
as `tradelab up` runs them; the clients (threads, one requests.Session and one API key each) in this process.
Three runs: each client polling once a second (a dashboard or script each), with the API's read cache (default
0.5 s) and without it; then every client back-to-back (saturation: throughput, and latency under it).
Run: make bench   (or: .venv/bin/python bench/bench_api.py [CLIENTS] [SECONDS])
"""
import datetime as dt, os, random, statistics, subprocess, sys, tempfile, threading, time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import requests  # noqa: E402

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--serve" else 50
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] != "--serve" else 15
PATHS = ("/status", "/positions", "/trades")
CMD = "python bench/bench_api.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fill_store(url: str, trades: int = 10_000, analyses: int = 50_000):
    "A migrated SQLite store with `trades` trades and `analyses` analyses on venue sim, bulk-inserted."
    from tradelab.core import UTC
    from tradelab.db import Analysis, Trade, make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(url); upgrade(eng)
    rng, t0 = random.Random(7), dt.datetime(2024, 1, 1, tzinfo=UTC)
    pvs, syms = ["technical@1", "chart_read@1", "confluence@1"], ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    a_rows = [{"venue": "sim", "source": "live", "symbol": rng.choice(syms), "timeframe": "60", "status": "accepted",
               "recommendation": rng.choice(["LONG", "SHORT", "HOLD"]), "confidence": Decimal(rng.randint(1, 99)) / 100,
               "prompt_version": rng.choice(pvs), "model": "technical", "created_at": t0 + dt.timedelta(minutes=i)}
              for i in range(analyses)]
    t_rows = [{"venue": "sim", "symbol": rng.choice(syms), "side": rng.choice(["LONG", "SHORT"]), "status": "closed",
               "qty": Decimal("0.01"), "entry_price": Decimal(60000), "exit_price": Decimal(60100),
               "pnl": Decimal(rng.randint(-500, 500)) / 10, "close_reason": "take_profit",
               "prompt_version": rng.choice(pvs), "created_at": t0 + dt.timedelta(minutes=5 * i),
               "closed_at": t0 + dt.timedelta(minutes=5 * i + 3)} for i in range(trades)]
    with eng.begin() as c:
        for table, rows in ((Analysis.__table__, a_rows), (Trade.__table__, t_rows)):
            for i in range(0, len(rows), 5000): c.execute(table.insert(), rows[i:i + 5000])
    return eng


def serve(url: str):
    "Child process: the simulator with three open positions and the API over them; prints its URL, stops on EOF."
    from types import SimpleNamespace
    from tradelab.api import api_routes, serve_in_thread
    from tradelab.core import D, SystemClock
    from tradelab.db import make_engine
    from tradelab.exchange import OrderRequest
    from tradelab.settings import load_env, load_settings
    from tradelab.simulator import start_in_thread
    from tradelab.venues import make_port
    sim = start_in_thread(rate_limits={"order": 10**6, "read": 10**6, "position": 10**6})
    clock, env, eng = SystemClock(), load_env(bybit_base_url=sim.url), make_engine(url)
    settings = lambda: load_settings(os.path.join(ROOT, "settings.ini"))
    desk = SimpleNamespace(engine=eng, venue="sim", clock=clock, settings=settings, env=env,
                           port=make_port(eng, env, settings(), clock))
    for sym, qty in (("BTCUSDT", "0.01"), ("ETHUSDT", "0.1"), ("SOLUSDT", "1")):
        desk.port.place_order(OrderRequest(sym, "Buy", D(qty), "Market", order_link_id=f"bench-{sym}"))
    # the per-key rate limit is not what is measured
    srvs = [serve_in_thread(api_routes(desk, rate=1e9, burst=1e9, cache_seconds=c)) for c in (0.5, 0)]
    print(*(s.url for s in srvs), flush=True)
    sys.stdin.read()
    for srv in srvs: srv.stop()
    sim.stop(); eng.dispose()


def client(url, key, seconds, period, out, start, offset, first):
    "GET the paths in turn (from the `first`) for `seconds`: one request every `period` seconds (0: back-to-back)."
    s = requests.Session(); s.headers["Authorization"] = f"Bearer {key}"
    start.wait(); time.sleep(offset)
    t_end, i, nxt = time.monotonic() + seconds, first, time.monotonic()
    while time.monotonic() < t_end:
        path = PATHS[i % len(PATHS)]; i += 1
        t = time.perf_counter(); r = s.get(url + path, timeout=60)
        out.append((path, time.perf_counter() - t, r.status_code))
        if period: nxt += period; time.sleep(max(0.0, nxt - time.monotonic()))
    s.close()


def run(title, url, keys, period):
    for p in PATHS: requests.get(url + p, headers={"Authorization": f"Bearer {keys[0]}"}, timeout=60)  # warm
    out, start, n = [], threading.Event(), len(keys)
    ts = [threading.Thread(target=client, args=(url, k, SECONDS, period, out, start, period * i / n, i))
          for i, k in enumerate(keys)]  # polling clients spread over the second, each starting on another path
    for th in ts: th.start()
    t = time.perf_counter(); start.set()
    for th in ts: th.join()
    wall = time.perf_counter() - t
    bad = sum(1 for x in out if x[2] != 200)
    print(f"{title}: {len(out):,} requests in {wall:.1f} s = {len(out) / wall:,.0f}/s; non-200: {bad}")
    for p in (*PATHS, "all"):
        xs = [x[1] for x in out if p in ("all", x[0])]
        print(f"  {p:>10}: p50 {pct(xs, 50):7.1f} ms  p95 {pct(xs, 95):7.1f} ms  p99 {pct(xs, 99):7.1f} ms  "
              f"mean {statistics.mean(xs) * 1000:7.1f} ms")


def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def main():
    from argon2 import PasswordHasher
    from tradelab import auth
    from tradelab.core import SystemClock
    print(f"# API reads, {CLIENTS} concurrent clients, {SECONDS:g} s per run, GET {', '.join(PATHS)} in turn; "
          f"store: 10,000 trades, 50,000 analyses, SQLite; aim: p95 <= 50 ms  ({CMD} {CLIENTS} {SECONDS:g})")
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/bench.db"
        t = time.perf_counter(); eng = fill_store(url); filled = time.perf_counter() - t
        auth.HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        auth.add_user(eng, "bench", "a long bench password", "viewer", "bench", SystemClock())
        keys = [auth.create_api_key(eng, "bench", f"c{i}", "bench") for i in range(CLIENTS)]
        eng.dispose()
        print(f"store filled in {filled:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        child = subprocess.Popen([sys.executable, __file__, "--serve", url], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            cached, uncached = (u + "/api/v1" for u in child.stdout.readline().split())
            run("polling once a second, read cache 0.5 s", cached, keys, 1.0)
            run("polling once a second, no read cache", uncached, keys, 1.0)
            run("back-to-back, read cache 0.5 s", cached, keys, 0)
        finally:
            child.stdin.close(); child.wait(30)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve": serve(sys.argv[2])
    else: main()
