"""Storage on both databases: exact money, aware times, migrations that match the models."""
import datetime as dt
import sqlite3
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from tradelab.core import D, TradelabError, UTC
from tradelab.db import Analysis, Base, Fill, Order, RejectedRow, Trade, make_engine, reject_row
from tradelab.migrate import current_revision, head_revision, require_current, upgrade


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
            assert (kind, raw) == ("text", "0.3")
        else:
            kind = c.exec_driver_sql(
                "select data_type from information_schema.columns where table_name='trades' and column_name='pnl'").scalar()
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
            s.add(Analysis(symbol="BTCUSDT", timeframe="60", image_path="charts/a.png", image_sha256="ab" * 32, prompt_version=pv))
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Analysis)) == 3


def test_an_order_link_id_cannot_be_stored_twice(engine):
    with Session(engine) as s:
        s.add(Order(client_order_id="tl-1-entry", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market", qty=D("0.01")))
        s.commit()
    with Session(engine) as s, pytest.raises(sa.exc.IntegrityError):
        s.add(Order(client_order_id="tl-1-entry", venue="sim", symbol="BTCUSDT", side="Buy", order_type="Market", qty=D("0.01")))
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
