"""Dashboard in Chromium: Desk page to interactive on a full store, and event -> visible latency.

The store holds 10,000 closed trades and 50,000 analyses (SQLite, venue sim) and two open positions on the
simulator; the dashboard is served in this process (its Tornado loop in a thread, as `tradelab up` serves it),
Chromium (Debian's, through Playwright) logs in once, then:
- Desk page to interactive: `goto /desk` until every Bokeh view has finished drawing and the positions table shows
  its rows (server page build + BokehJS + Tabulator), repeated; median and p95 (aim <= 1.5 s).
- event -> visible: a `tick` event published on the desk's bus with a new mark until the Positions page shows that
  mark (bus -> LiveStore -> the session's document loop -> patch -> WebSocket -> Tabulator), repeated; p50/p95
  (aim <= 250 ms). Browser-side polling is per animation frame (~16 ms), included.
Run: make bench   (or: .venv/bin/python bench/bench_dashboard.py [loads] [events])
"""
import os, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
CMD = "python bench/bench_dashboard.py"
DRAWN = "() => window.Bokeh && Bokeh.documents.length > 0 && [...Bokeh.index].every(v => v.has_finished())"


def p95(xs): return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def cpu() -> tuple[float, float]:
    "CPU seconds used so far by this process (the server) and by its children (Playwright's driver, Chromium)."
    import psutil
    me, kids = psutil.Process(), psutil.Process().children(recursive=True)
    own = sum(me.cpu_times()[:2])
    return own, sum(sum(k.cpu_times()[:2]) for k in kids if k.is_running())


def fill_store(url: str, trades: int = 10_000, analyses: int = 50_000):
    "A migrated SQLite store with `trades` closed trades and `analyses` analyses on venue sim, bulk-inserted."
    import datetime as dt, random
    from decimal import Decimal
    from tradelab.core import UTC
    from tradelab.db import Analysis, Trade, make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(url); upgrade(eng)
    rng, t0 = random.Random(7), dt.datetime.now(UTC) - dt.timedelta(minutes=5 * trades + 10)
    pvs, syms = ["technical@1", "chart_read@1", "confluence@1"], ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    a_rows = [{"venue": "sim", "source": "live", "symbol": rng.choice(syms), "timeframe": "60", "status": "accepted",
               "recommendation": rng.choice(["LONG", "SHORT", "HOLD"]), "confidence": Decimal(rng.randint(1, 99)) / 100,
               "prompt_version": rng.choice(pvs), "model": "technical", "created_at": t0 + dt.timedelta(minutes=i)}
              for i in range(analyses)]
    t_rows = [{"venue": "sim", "symbol": rng.choice(syms), "side": rng.choice(["LONG", "SHORT"]), "status": "closed",
               "qty": Decimal("0.01"), "entry_price": Decimal(60000), "exit_price": Decimal(60100),
               "pnl": Decimal(rng.randint(-500, 520)) / 10, "close_reason": "take_profit",
               "prompt_version": rng.choice(pvs), "created_at": t0 + dt.timedelta(minutes=5 * i),
               "opened_at": t0 + dt.timedelta(minutes=5 * i), "closed_at": t0 + dt.timedelta(minutes=5 * i + 3)}
              for i in range(trades)]
    with eng.begin() as c:
        for table, rows in ((Analysis.__table__, a_rows), (Trade.__table__, t_rows)):
            for i in range(0, len(rows), 5000): c.execute(table.insert(), rows[i:i + 5000])
    return eng


def main(loads: int = 10, events: int = 40):
    from argon2 import PasswordHasher
    from playwright.sync_api import sync_playwright
    from dashboard_desk import PASSWORD, Served, add_users, make_desk, open_position, stop_desk
    from tradelab import auth
    auth.HASHER = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)  # logins are not what is measured
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter(); fill_store(f"sqlite:///{tmp / 'tradelab.db'}").dispose()
    print(f"store: 10,000 trades + 50,000 analyses in {time.perf_counter() - t:.1f} s")
    desk = make_desk(tmp, streams=False)  # ticks come from the bench, not from the simulator's market
    add_users(desk, {"tia": "trader"})
    for sym, side, qty, price in (("BTCUSDT", "Buy", "0.01", "60000"), ("ETHUSDT", "Sell", "0.1", "3000")):
        open_position(desk, sym, side, qty, price)
    srv = Served(desk)
    load_s, lags, cpus = [], [], []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=os.environ.get("TRADELAB_CHROMIUM", "/usr/bin/chromium"),
                                  args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(srv.url + "/desk")
            page.fill("input[name=username]", "tia"); page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]"); page.wait_for_url(srv.url + "/desk")
            for i in range(loads + 1):  # the first load warms the server's imports and caches: not counted
                t, c = time.perf_counter(), cpu()
                page.goto(srv.url + "/desk")
                page.locator(".tl-positions .tabulator-row").first.wait_for(timeout=60_000)
                page.wait_for_function(DRAWN, timeout=60_000)
                if i: load_s.append(time.perf_counter() - t); cpus.append([b - a for a, b in zip(c, cpu())])
            page.goto(srv.url + "/positions")
            cell = page.locator(".tl-positions .tabulator-row", has_text="BTCUSDT").locator('[tabulator-field="mark"]')
            cell.wait_for(timeout=60_000)
            for i in range(events):
                mark = 61000 + i
                t = time.perf_counter()
                desk.bus.publish("tick", symbol="BTCUSDT", mark=str(mark))
                cell.filter(has_text=f"{mark:,}.00").wait_for(timeout=10_000)
                lags.append(time.perf_counter() - t)
            b.close()
    finally:
        srv.stop(); stop_desk(desk)
    print(f"Desk page to interactive (10,000 trades, 50,000 analyses), {loads} loads: "
          f"median {statistics.median(load_s) * 1000:.0f} ms, p95 {p95(load_s) * 1000:.0f} ms (aim <= 1500 ms)")
    print(f"  CPU per load (median): server {statistics.median(c[0] for c in cpus) * 1000:.0f} ms, browser and "
          f"driver {statistics.median(c[1] for c in cpus) * 1000:.0f} ms (partly in parallel)")
    print(f"event -> visible in the browser, {events} ticks: median {statistics.median(lags) * 1000:.0f} ms, "
          f"p95 {p95(lags) * 1000:.0f} ms (aim <= 250 ms)")
    print(f"command: {CMD} {loads} {events}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
