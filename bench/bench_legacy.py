"""Legacy migration and prompt statistics at scale.

Run: make bench   (or: .venv/bin/python bench/bench_legacy.py [--full])
--full adds the 1,000,000-analysis migration (a few minutes).
"""
import os, sys, tempfile, time, uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tradelab.analytics import prompt_stats, performance
from tradelab.db import make_engine
from tradelab.legacy import migrate_legacy
from tradelab.legacy_fixture import make_legacy_db
from tradelab.migrate import upgrade

PG_ADMIN = os.environ.get("TRADELAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CMD = "python bench/bench_legacy.py" + (" --full" if "--full" in sys.argv else "")


def pg_engine():
    name = f"tradelab_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c: c.exec_driver_sql(f'create database "{name}"')
    url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    def drop():
        with admin.connect() as c: c.exec_driver_sql(f'drop database if exists "{name}" with (force)')
    return make_engine(url), drop


def run(label, eng, legacy, planted):
    upgrade(eng)
    t = time.perf_counter(); res = migrate_legacy(eng, legacy); took = time.perf_counter() - t
    perf = performance(eng)
    print(f"{label}: migrated {res['analyses_imported']:,} analyses + {res['trades_imported']:,} trades "
          f"in {took:.2f} s ({(res['analyses_read'] + res['trades_read']) / took:,.0f} rows/s); "
          f"win rate {perf['win_rate']:.4f}")
    t = time.perf_counter(); again = migrate_legacy(eng, legacy); took2 = time.perf_counter() - t
    print(f"{label}: re-run (imports {again['analyses_imported'] + again['trades_imported']}) in {took2:.2f} s")
    return eng


def stats(label, eng, reps=5):
    prompt_stats(eng); prompt_stats(eng, using="duckdb")
    for name, using in (("SQL", "sql"), ("DuckDB", "duckdb")):
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); prompt_stats(eng, using=using); ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"{label}: prompt statistics ({name}) median {ts[len(ts) // 2] * 1000:.0f} ms")


def main():
    print(f"== {CMD}")
    d = Path(tempfile.mkdtemp())
    legacy = d / "legacy.db"
    planted = make_legacy_db(legacy)
    run("sqlite 15.5k", make_engine(f"sqlite:///{d}/t.db"), legacy, planted)
    eng, drop = pg_engine()
    try: run("postgresql 15.5k", eng, legacy, planted)
    finally: eng.dispose(); drop()
    eng = make_engine(f"sqlite:///{d}/stats.db"); upgrade(eng)
    t = time.perf_counter(); n = fill_million(eng)
    print(f"(1,000,000 analyses + {n:,} closed trades inserted in {time.perf_counter() - t:.0f} s)")
    stats("sqlite 1M", eng)
    eng2, drop = pg_engine(); upgrade(eng2)
    try:
        fill_million(eng2)
        with eng2.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("vacuum analyze")  # what autovacuum does
        stats("postgresql 1M", eng2)
    finally: eng2.dispose(); drop()
    if "--full" in sys.argv:
        big = d / "legacy_1m.db"
        t = time.perf_counter(); planted = make_legacy_db(big, 1_000_000, 135_000, seed=11)
        print(f"(legacy fixture of 1,000,000 analyses written in {time.perf_counter() - t:.0f} s)")
        run("sqlite 1M", make_engine(f"sqlite:///{d}/big.db"), big, planted)
        eng3, drop = pg_engine()
        try: run("postgresql 1M", eng3, big, planted)
        finally: eng3.dispose(); drop()


def fill_million(eng, n=1_000_000, trades=120_000):
    "Analyses and closed trades of the real-money record (venue live), which the statistics cover by default."
    import datetime as dt, random
    from decimal import Decimal
    from tradelab.db import Analysis, Trade
    rng = random.Random(3)
    pvs = ["chart_read@1", "confluence@1", "risk_first@1", "technical@1", "v1-unknown"]
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    with eng.begin() as c:
        for k in range(0, n, 50_000):
            c.execute(Analysis.__table__.insert(),
                      [dict(symbol="BTCUSDT", timeframe="60", prompt_version=rng.choice(pvs), venue="live",
                            recommendation="LONG", confidence=Decimal(rng.randint(30, 95)) / 100, created_at=t0)
                       for _ in range(50_000)])
        c.execute(Trade.__table__.insert(),
                  [dict(symbol="BTCUSDT", side="LONG", status="closed", venue="live", prompt_version=rng.choice(pvs),
                        pnl=Decimal(rng.randint(-5000, 8000)) / 100, closed_at=t0 + dt.timedelta(minutes=i))
                   for i in range(trades)])
    return trades

if __name__ == "__main__":
    main()
