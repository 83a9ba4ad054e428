"""Dashboard pages (tradelab.pages) built server-side on a full store: what a page costs before the browser sees it.

The store holds 10,000 closed trades, 50,000 analyses and 2,000 equity snapshots (SQLite, venue sim). For each page
the bench times, for an admin (the prompts page over venue sim, where the data is): building the layout (service
reads + Panel/HoloViews/Bokeh objects) and turning it into Bokeh models (`get_root`, what a served session does
before sending the document), repeated; median and p95. The browser side (BokehJS, Tabulator) is bench_dashboard's.
Run: make bench   (or: .venv/bin/python bench/bench_pages.py [repeats])
"""
import datetime as dt, random, statistics, sys, tempfile, time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CMD = "python bench/bench_pages.py"


def p95(xs): return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def fill(eng, trades: int = 10_000, analyses: int = 50_000, snapshots: int = 2_000):
    "Bulk-insert closed trades, analyses and equity snapshots on venue sim."
    from tradelab.core import UTC
    from tradelab.db import Analysis, EquitySnapshot, Trade
    rng, t0 = random.Random(7), dt.datetime(2024, 1, 1, tzinfo=UTC)
    pvs, syms = ["technical@1", "chart_read@1", "confluence@1"], ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    a_rows = [{"venue": "sim", "source": "live", "symbol": rng.choice(syms), "timeframe": "60", "status": "accepted",
               "recommendation": "LONG", "confidence": Decimal(rng.randint(1, 99)) / 100, "entry_price": Decimal(60000),
               "stop_loss": Decimal(59000), "take_profit": Decimal(62000), "prompt_version": rng.choice(pvs),
               "model": "technical", "cost_usd": Decimal("0.002"), "image_sha256": f"c{i // 3}",
               "created_at": t0 + dt.timedelta(minutes=i)} for i in range(analyses)]
    t_rows = [{"venue": "sim", "symbol": rng.choice(syms), "side": "LONG", "status": "closed", "qty": Decimal("0.01"),
               "pnl": Decimal(rng.randint(-500, 520)) / 10, "prompt_version": rng.choice(pvs), "analysis_id": i * 5 + 1,
               "closed_at": t0 + dt.timedelta(minutes=5 * i + 3)} for i in range(trades)]
    e_rows = [{"venue": "sim", "equity": Decimal(10000 + rng.randint(-300, 300)), "at": t0 + dt.timedelta(hours=i)}
              for i in range(snapshots)]
    with eng.begin() as c:
        for model, rows in ((Analysis, a_rows), (Trade, t_rows), (EquitySnapshot, e_rows)):
            for i in range(0, len(rows), 5000): c.execute(model.__table__.insert(), rows[i:i + 5000])


def main(repeats: int = 3):
    from tradelab import pages
    from tradelab.config_store import effective_settings
    from tradelab.core import ManualClock
    from tradelab.db import make_engine
    from tradelab.desk import Desk
    from tradelab.live import PageContext
    from tradelab.migrate import upgrade
    from tradelab.paper import synthetic_port
    from tradelab.settings import Env
    tmp = Path(tempfile.mkdtemp())
    eng = make_engine(f"sqlite:///{tmp / 'tradelab.db'}"); upgrade(eng)
    t = time.perf_counter(); fill(eng)
    print(f"store: 10,000 trades + 50,000 analyses + 2,000 snapshots in {time.perf_counter() - t:.1f} s")
    clock = ManualClock("2024-02-05T00:00:00Z")
    ini = tmp / "settings.ini"; ini.write_text("[trading]\nvenue = sim\n")
    desk = Desk(eng, lambda: effective_settings(eng, ini), Env(_env_file=None), clock)
    desk.port, desk.settings_path = synthetic_port(clock, venue="sim"), ini
    ctx = PageContext(desk, {"name": "bench", "role": "admin"})
    print(f"{'page':<12} {'build p50':>10} {'p95':>8} {'+ models p50':>13} {'p95':>8}   (ms, {repeats} runs)")
    shown = {**pages.PAGES, "prompts": lambda c: pages.prompt_comparison(c.desk.engine, venues=["sim"])}  # has data
    for name, page in shown.items():
        t = time.perf_counter(); page(ctx).get_root()  # warm: imports, first plot of each kind
        if (first := time.perf_counter() - t) > 10:  # not worth repeating: say so
            print(f"{name:<12} {first * 1000:>10.0f}  (one run, build + models: over 10 s, not repeated)"); continue
        build, models = [], []
        for _ in range(repeats):
            t = time.perf_counter(); layout = page(ctx); build.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter(); layout.get_root(); models.append((time.perf_counter() - t) * 1000)
        print(f"{name:<12} {statistics.median(build):>10.0f} {p95(build):>8.0f} {statistics.median(models):>13.0f} "
              f"{p95(models):>8.0f}")
    eng.dispose()
    print(f"command: {CMD} {repeats}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
