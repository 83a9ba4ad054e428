"""Storage throughput: insert and query 100k analyses on SQLite and PostgreSQL.

Run: make bench   (or: .venv/bin/python bench/bench_storage.py [N])
"""
import datetime as dt, os, random, sys, tempfile, time, uuid
from decimal import Decimal

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tradelab.analytics import prompt_stats
from tradelab.core import UTC
from tradelab.db import Analysis, make_engine
from tradelab.migrate import upgrade


def median_time(f, *args, reps=5) -> float:
    "Median seconds of `f(*args)` after one warm-up call (imports and first connections are not the query)."
    f(*args); ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(*args); ts.append(time.perf_counter() - t)
    return sorted(ts)[reps // 2]


N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
PG_ADMIN = os.environ.get("TRADELAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CMD = "python bench/bench_storage.py"


def rows(n, seed=1):
    rng = random.Random(seed)
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    pvs = ["plain@1", "confluence@1", "risk-first@1", "technical@1"]
    for i in range(n):
        px = Decimal(str(round(rng.uniform(20_000, 70_000), 2)))
        yield {"symbol": rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"]), "timeframe": rng.choice(["60", "240"]),
               "source": "live", "venue": "live", "status": "accepted",
               "recommendation": rng.choice(["LONG", "SHORT", "HOLD"]),
               "confidence": Decimal(str(round(rng.random(), 4))), "entry_price": px, "stop_loss": px * Decimal("0.98"),
               "take_profit": px * Decimal("1.04"), "prompt_version": rng.choice(pvs), "model": "gpt-4o",
               "image_sha256": f"{i:064x}", "created_at": t0 + dt.timedelta(minutes=i), "reasoning": "bench"}


def bench(name, eng):
    upgrade(eng)
    table = Analysis.__table__
    data = list(rows(N))
    t = time.perf_counter()
    with eng.begin() as c:
        for i in range(0, N, 5000):
            c.execute(table.insert(), data[i:i + 5000])
    ins = time.perf_counter() - t
    rng = random.Random(2)
    q = 2000
    t = time.perf_counter()
    with eng.connect() as c:
        for _ in range(q):
            c.execute(sa.select(table).where(table.c.id == rng.randint(1, N))).fetchall()
    point = q / (time.perf_counter() - t)
    q2 = 300
    t = time.perf_counter()
    with eng.connect() as c:
        for _ in range(q2):
            c.execute(sa.select(table).where(table.c.symbol == "BTCUSDT", table.c.timeframe == "60")
                      .order_by(table.c.created_at.desc()).limit(50)).fetchall()
    recent = q2 / (time.perf_counter() - t)
    sql_stats, duck_stats = (median_time(prompt_stats, eng, None, using) for using in ("sql", "duckdb"))
    print(f"{name:>10}: insert {N / ins:,.0f} analyses/s ({ins:.2f} s for {N:,}); point query {point:,.0f}/s; "
          f"latest-50 query {recent:,.0f}/s; "
          f"prompt stats SQL {sql_stats * 1000:.0f} ms, DuckDB {duck_stats * 1000:.0f} ms")


def main():
    print(f"# storage benchmark, {N:,} analyses  ({CMD} {N})")
    with tempfile.TemporaryDirectory() as d:
        eng = make_engine(f"sqlite:///{d}/bench.db")
        bench("sqlite", eng)
        eng.dispose()
    name = f"tradelab_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'create database "{name}"')
    try:
        eng = make_engine(sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
        bench("postgresql", eng)
        eng.dispose()
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'drop database if exists "{name}" with (force)')


if __name__ == "__main__":
    main()
