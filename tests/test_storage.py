"""Storage on both databases: exact money, aware times, migrations that match the models."""
import datetime as dt
import sqlite3
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from tradelab.core import D, TradelabError, UTC
from tradelab.db import (Analysis, Base, EquitySnapshot, Fill, Order, PipelineRun, RejectedRow, Trade, make_engine,
                         reject_row, ORDER_STATUSES, RUN_STATUSES, TRADE_STATUSES, VENUES)
from tradelab.migrate import current_revision, downgrade, head_revision, require_current, upgrade


def test_prices_round_trip_exactly_on_both_databases(engine):
    price = D("50123.1234567891")
    tiny = D("0.0000000001")
    with Session(engine) as s:
        a = Analysis(symbol="BTCUSDT", timeframe="60", entry_price=price, stop_loss=tiny, confidence=D("0.87"))
        s.add(a)
        s.commit()
        aid = a.id
    with Session(engine) as s:
        got = s.get(Analysis, aid)
        assert got.entry_price == price and isinstance(got.entry_price, Decimal)
        assert got.stop_loss == tiny
        assert got.confidence == Decimal("0.87")


def test_money_is_never_stored_as_a_binary_float(engine):
    with Session(engine) as s:
        s.add(Trade(symbol="BTCUSDT", side="LONG", pnl=D("0.1") + D("0.2")))
        s.commit()
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            kind, raw = c.exec_driver_sql("select typeof(pnl), pnl from trades").one()
            assert (kind, raw) == ("integer", 3_000_000_000)  # 0.3 x 10^10, exact
        else:
            kind = c.exec_driver_sql(
                "select data_type from information_schema.columns where table_name='trades' and column_name='pnl'"
            ).scalar()
            assert kind == "numeric"
            assert c.exec_driver_sql("select pnl = 0.3 from trades").scalar() is True


def test_timestamps_come_back_aware_in_utc(engine):
    t = dt.datetime(2024, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with Session(engine) as s:
        s.add(Trade(symbol="ETHUSDT", side="SHORT", opened_at=t))
        s.commit()
    with Session(engine) as s:
        got = s.scalars(sa.select(Trade)).one().opened_at
    assert got == t and got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)


def test_the_same_image_may_be_analysed_many_times(engine):
    with Session(engine) as s:
        for pv in ("plain@1", "confluence@1", "plain@1"):
            s.add(Analysis(symbol="BTCUSDT", timeframe="60", image_path="charts/a.png", image_sha256="ab" * 32,
                           prompt_version=pv))
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Analysis)) == 3


def test_an_order_link_id_cannot_be_stored_twice(engine):
    with Session(engine) as s:
        s.add(Order(client_order_id="tl-1-entry", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market",
                    qty=D("0.01")))
        s.commit()
    with Session(engine) as s, pytest.raises(sa.exc.IntegrityError):
        s.add(Order(client_order_id="tl-1-entry", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market",
                    qty=D("0.01")))
        s.commit()


def test_a_fill_is_never_counted_twice(engine):
    now = dt.datetime.now(UTC)
    with Session(engine) as s:
        s.add(Fill(exec_id="e1", venue="sim", symbol="BTCUSDT", side="Buy", qty=D(1), price=D(2), executed_at=now))
        s.commit()
    with Session(engine) as s, pytest.raises(sa.exc.IntegrityError):
        s.add(Fill(exec_id="e1", venue="sim", symbol="BTCUSDT", side="Buy", qty=D(1), price=D(2), executed_at=now))
        s.commit()


def test_foreign_keys_are_enforced_on_sqlite_too(engine):
    with Session(engine) as s, pytest.raises(sa.exc.IntegrityError):
        s.add(Trade(symbol="BTCUSDT", side="LONG", analysis_id=999_999))
        s.commit()


def test_rejected_rows_keep_one_row_per_input_with_the_latest_reason(engine):
    with Session(engine) as s:
        reject_row(s, "legacy.trades", "t9", "unknown side 'x'", {"side": "x"})
        s.commit()
        reject_row(s, "legacy.trades", "t9", "unknown side 'X'", {"side": "X"})
        s.commit()
        rows = s.scalars(sa.select(RejectedRow)).all()
    assert [(r.source_id, r.reason) for r in rows] == [("t9", "unknown side 'X'")]


def test_migrations_produce_exactly_the_models(engine):
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_upgrade_twice_is_a_no_op(engine):
    assert upgrade(engine) == (head_revision(), head_revision())
    require_current(engine)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_engine):
    with sqlite_engine.connect() as c:
        assert c.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("pragma foreign_keys").scalar() == 1


def test_a_database_newer_than_the_code_is_refused_and_left_untouched(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path}/new.db")
    upgrade(eng)
    with eng.begin() as c:
        c.exec_driver_sql("update alembic_version set version_num = 'ffff_future'")
    def dump():
        with sqlite3.connect(tmp_path / "new.db") as con:
            return list(con.iterdump())
    before = dump()
    with pytest.raises(TradelabError, match="newer than this tradelab"):
        upgrade(eng)
    with pytest.raises(TradelabError, match="newer than this tradelab"):
        require_current(eng)
    eng.dispose()
    assert current_revision(make_engine(f"sqlite:///{tmp_path}/new.db")) == "ffff_future"
    assert dump() == before


def test_an_empty_database_asks_for_db_upgrade(tmp_path):
    with pytest.raises(TradelabError, match="tradelab db upgrade"):
        require_current(make_engine(f"sqlite:///{tmp_path}/empty.db"))


def test_an_unreachable_postgresql_is_one_clear_error():
    eng = make_engine("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(TradelabError) as e:
        upgrade(eng)
    msg = str(e.value)
    assert "cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere" in msg
    assert "hunter2" not in msg and "\n" not in msg


# --- money compares, orders and sums as numbers inside SQL (issue 9, item 1) ---

def _snapshots(engine, values, venue="sim"):
    with Session(engine) as s:
        for i, v in enumerate(values):
            s.add(EquitySnapshot(venue=venue, equity=D(v), at=dt.datetime(2024, 1, 1, i, tzinfo=UTC)))
        s.commit()


def test_the_equity_peak_is_the_largest_amount_not_the_largest_text(engine):
    _snapshots(engine, ["9500", "11500", "10000"])
    with Session(engine) as s:
        peak = s.scalar(sa.select(sa.func.max(EquitySnapshot.equity)).where(EquitySnapshot.venue == "sim"))
        low = s.scalar(sa.select(sa.func.min(EquitySnapshot.equity)))
    assert peak == D("11500") and isinstance(peak, Decimal) and low == D("9500")
    assert (peak - D("10000")) / peak > D("0.13")  # the 10% drawdown rule sees the true 13%


def test_money_orders_by_amount_across_digit_counts_and_signs(engine):
    values = ["9.5", "100", "-20", "0", "11500", "-3.25", "0.0000000001", "-0.0000000001", "922337203.6854775807"]
    _snapshots(engine, values)
    with Session(engine) as s:
        got = s.scalars(sa.select(EquitySnapshot.equity).order_by(EquitySnapshot.equity)).all()
        above = s.scalars(sa.select(EquitySnapshot.equity).where(EquitySnapshot.equity > D("9.5"))).all()
    assert got == sorted(D(v) for v in values)
    assert sorted(above) == [D("100"), D("11500"), D("922337203.6854775807")]


def test_a_win_is_a_pnl_above_zero_in_sql(engine):
    pnls = ["-5", "12.5", "0", "-0.0000000001", "0.0000000001", "100", "-100", "9"]
    with Session(engine) as s:
        for p in pnls:
            s.add(Trade(symbol="BTCUSDT", side="LONG", status="closed", venue="live", pnl=D(p)))
        s.commit()
        def count(cond): return s.scalar(sa.select(sa.func.count()).select_from(Trade).where(cond))
        assert count(Trade.pnl > 0) == 4 and count(Trade.pnl < 0) == 3 and count(Trade.pnl == 0) == 1
        wins = s.scalar(sa.select(sa.func.sum(sa.case((Trade.pnl > 0, 1), else_=0))))
    assert wins == 4


def test_sums_of_money_in_sql_are_exact(engine):
    tenths = ["0.1", "0.2"]
    many = [f"{i}.{i:010d}"[:-1] + "7" for i in range(1, 200)]  # ten decimal places each
    with Session(engine) as s:
        for p in tenths:
            s.add(Trade(symbol="BTCUSDT", side="LONG", status="closed", venue="live", pnl=D(p)))
        for p in many:
            s.add(Trade(symbol="ETHUSDT", side="LONG", status="closed", venue="live", pnl=-D(p)))
        s.commit()
        by = dict(s.execute(sa.select(Trade.symbol, sa.func.sum(Trade.pnl)).group_by(Trade.symbol)).all())
        avg = s.scalar(sa.select(sa.func.avg(Trade.pnl)).where(Trade.symbol == "BTCUSDT"))
        total = s.scalar(sa.select(sa.func.coalesce(sa.func.sum(Trade.pnl), 0)).where(Trade.symbol == "none"))
    assert by["BTCUSDT"] == Decimal("0.3") and str(by["BTCUSDT"]) == "0.3"
    assert by["ETHUSDT"] == -sum(D(p) for p in many)
    assert avg == Decimal("0.15") and total == 0


def test_money_is_rounded_half_even_to_ten_places_identically_on_both_databases(engine):
    values = {"1.00000000005": "1", "1.00000000015": "1.0000000002", "-2.00000000005": "-2",
              "0.123456789012": "0.1234567890"}
    with Session(engine) as s:
        for raw in values:
            s.add(Trade(symbol="BTCUSDT", side="LONG", notes=raw, pnl=D(raw)))
        s.commit()
        got = {t.notes: t.pnl for t in s.scalars(sa.select(Trade))}
    assert got == {raw: D(want) for raw, want in values.items()}
    assert str(got["-2.00000000005"]) == "-2" and str(got["0.123456789012"]) == "0.123456789"


def test_an_amount_sqlite_cannot_hold_exactly_is_refused_naming_it(sqlite_engine):
    with Session(sqlite_engine) as s, pytest.raises(TradelabError, match=r"1000000000\.5 .*PostgreSQL"):
        s.add(Trade(symbol="BTCUSDT", side="LONG", pnl=D("1000000000.5")))
        s.commit()
    with Session(sqlite_engine) as s:
        s.add(Trade(symbol="BTCUSDT", side="LONG", pnl=D("-922337203.6854775808")))  # the smallest int64, still exact
        s.commit()
        assert s.scalar(sa.select(Trade.pnl)) == D("-922337203.6854775808")


def test_money_is_not_multiplied_in_sql_where_the_encoding_would_make_it_wrong():
    with pytest.raises(TradelabError, match="compute in Python"):
        Trade.qty * Trade.entry_price


# --- CHECK constraints on statuses and venues ---

@pytest.mark.parametrize("row", [
    lambda: Trade(symbol="BTCUSDT", side="LONG", status="bogus"),
    lambda: Trade(symbol="BTCUSDT", side="LONG", venue="moon"),
    lambda: Order(client_order_id="x-1", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market", qty=D(1),
                  status="lost"),
    lambda: Analysis(symbol="BTCUSDT", timeframe="60", status="maybe"),
    lambda: PipelineRun(pipeline="trading_cycle", status="exploded"),
], ids=["trade-status", "trade-venue", "order-status", "analysis-status", "run-status"])
def test_a_status_or_venue_outside_the_known_ones_is_refused_by_the_database(engine, row):
    with Session(engine) as s, pytest.raises(sa.exc.IntegrityError, match="(?i)check"):
        s.add(row())
        s.commit()


def test_every_known_status_and_venue_is_accepted(engine):
    with Session(engine) as s:
        for st in TRADE_STATUSES:
            s.add(Trade(symbol="BTCUSDT", side="LONG", status=st))
        for v in VENUES:
            s.add(Trade(symbol="BTCUSDT", side="LONG", venue=v))
        for i, st in enumerate(ORDER_STATUSES):
            s.add(Order(client_order_id=f"o-{i}", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market",
                        qty=D(1), status=st))
        for st in RUN_STATUSES:
            s.add(PipelineRun(pipeline="trading_cycle", status=st))
        s.commit()


# --- migration 0004: text money converted exactly, venues and purposes backfilled ---

TEXT_MONEY = ["9500", "11500", "-20.5", "0.1", "0", "-0.0000000001", "123456789.0123456789", "50123.1234567891", "1E+3",
              "0.30000000000000004", "-922337203.6854775808"]


LINKS = {"live-7-entry": "entry", "kill-BTCUSDT-1700000000-close": "kill", "tl-9-close": "close", "ext-123": None,
         "tl-1-entry": "entry"}


def _insert(c, table, **cols):
    """A row written the way revisions 0001-0003 stored it (raw SQL, money as text)."""
    c.execute(sa.text(f"insert into {table} ({', '.join(cols)}) values ({', '.join(':' + k for k in cols)})"), cols)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request, tmp_path):
    """An empty database, never migrated, on each of the two."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path}/old.db")
        yield eng
        eng.dispose()
        return
    from conftest import _pg_admin, PG_ADMIN_URL
    name, admin = f"tradelab_t0004_{uuid.uuid4().hex[:8]}", _pg_admin()
    with admin.connect() as c:
        c.exec_driver_sql(f'create database "{name}"')
    eng = make_engine(sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    yield eng
    eng.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f'drop database if exists "{name}" with (force)')
    admin.dispose()


def _store_at_0003(eng):
    assert upgrade(eng, "0003") == (None, "0003")
    day = "2024-01-01 00:00:00"
    with eng.begin() as c:
        if eng.dialect.name == "sqlite":
            kind = c.exec_driver_sql("select type from pragma_table_info('trades') where name = 'pnl'").scalar()
            assert kind == "VARCHAR(64)"
        for i, source, entry, conf in [(1, "legacy", "50123.1234567891", "0.87"), (2, "live", None, "0.5")]:
            _insert(c, "analyses", id=i, symbol="BTCUSDT", timeframe="60", source=source, status="accepted",
                    prompt_version="v1", entry_price=entry, confidence=conf, created_at=day)
        for i, v in enumerate(TEXT_MONEY):
            _insert(c, "trades", id=i + 1, analysis_id=1, venue="legacy", symbol="BTCUSDT", side="LONG",
                    status="closed", pnl=v, qty="0.001", created_at=day, updated_at=day)
            _insert(c, "equity_snapshots", venue="sim", equity=v, at=day)
        for link in LINKS:
            _insert(c, "orders", client_order_id=link, trade_id=1, venue="live", symbol="BTCUSDT", side="Buy",
                    order_type="Market", qty="0.001", price="50000.5", reduce_only=False, status="filled",
                    created_at=day, updated_at=day)
    return eng


def test_migration_0004_converts_text_money_exactly_and_backfills(empty_engine):
    eng = _store_at_0003(empty_engine)
    assert upgrade(eng) == ("0003", head_revision())
    with Session(eng) as s:
        pnls = [t.pnl for t in s.scalars(sa.select(Trade).order_by(Trade.id))]
        equity = s.scalars(sa.select(EquitySnapshot.equity).order_by(EquitySnapshot.id)).all()
        a = s.get(Analysis, 1)
        purposes = dict(s.execute(sa.select(Order.client_order_id, Order.purpose)).all())
        peak = s.scalar(sa.select(sa.func.max(EquitySnapshot.equity)))
        venues = dict(s.execute(sa.select(Analysis.id, Analysis.venue)).all())
    want = [D(v).quantize(Decimal("1E-10")) for v in TEXT_MONEY]  # 0.30000000000000004 -> 0.3: half-even at 10 places
    assert pnls == want and equity == want and peak == D("123456789.0123456789")
    assert a.entry_price == D("50123.1234567891") and a.confidence == D("0.87")
    assert venues == {1: "legacy", 2: None}
    assert purposes == LINKS
    with eng.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        if eng.dialect.name == "sqlite":
            assert c.exec_driver_sql("select typeof(pnl) from trades where id = 1").scalar() == "integer"
            assert c.exec_driver_sql("pragma foreign_keys").scalar() == 1
            assert c.exec_driver_sql("pragma foreign_key_check").fetchall() == []
    assert diff == []


def test_migration_0004_downgrades_back_to_the_same_text(tmp_path):
    eng = _store_at_0003(make_engine(f"sqlite:///{tmp_path}/old.db"))
    with eng.connect() as c:
        before = c.exec_driver_sql("select id, pnl, qty from trades order by id").fetchall()
    upgrade(eng)
    assert downgrade(eng, "0003") == (head_revision(), "0003")
    with eng.connect() as c:
        after = c.exec_driver_sql("select id, pnl, qty from trades order by id").fetchall()
        assert "purpose" not in {r[1] for r in c.exec_driver_sql("pragma table_info('orders')")}
    assert [(i, D(p), D(q)) for i, p, q in after] == [(i, D(p).quantize(Decimal("1E-10")), D(q)) for i, p, q in before]
    assert all(isinstance(p, str) for _, p, _ in after)
    assert upgrade(eng) == ("0003", head_revision())


@pytest.mark.parametrize("bad, says", [
    ("update trades set pnl = '1000000000' where id = 3", r"trades\.pnl \(row 3\): 1000000000 .*PostgreSQL"),
    ("update trades set status = 'canceled' where id = 2", r"trades\.status .*'canceled' \(1 rows\)"),
], ids=["money-out-of-sqlite-range", "status-the-check-refuses"])
def test_migration_0004_stops_on_a_value_it_cannot_keep_naming_it_and_changes_nothing(tmp_path, bad, says):
    eng = _store_at_0003(make_engine(f"sqlite:///{tmp_path}/old.db"))
    with eng.begin() as c:
        c.exec_driver_sql(bad)
    with pytest.raises(TradelabError, match=says):
        upgrade(eng)
    assert current_revision(eng) == "0003"
    with eng.connect() as c:
        assert "venue" not in {r[1] for r in c.exec_driver_sql("pragma table_info('analyses')")}
