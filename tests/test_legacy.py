"""Migrating the old bot's export: every row imported normalised or rejected with its reason, once."""
import json, sqlite3
import pytest
import sqlalchemy as sa
from tradelab.analytics import performance
from tradelab.cli import main
from tradelab.core import TradelabError
from tradelab.db import Analysis
from tradelab.legacy import migrate_legacy
from tradelab.legacy_fixture import make_legacy_db


@pytest.fixture(scope="module")
def legacy_small(tmp_path_factory):
    p = tmp_path_factory.mktemp("legacy") / "old.db"
    return p, make_legacy_db(p, 2000, 400, seed=3)


@pytest.fixture(scope="module")
def legacy_full(tmp_path_factory):
    p = tmp_path_factory.mktemp("legacy") / "full.db"
    return p, make_legacy_db(p)


def count(engine, table, where="1=1"):
    with engine.connect() as c:
        return c.exec_driver_sql(f"select count(*) from {table} where {where}").scalar()


def test_the_full_history_migrates_and_reproduces_the_owners_win_rate(engine, legacy_full):
    path, planted = legacy_full
    res = migrate_legacy(engine, path)
    assert res["analyses_read"] == 15500 and res["analyses_imported"] == 15500 - planted["analyses_unimportable"]
    assert res["trades_rejected"] == planted["trades_unimportable"]
    perf = performance(engine)
    assert perf["closed_trades"] == planted["closed_trades"] and round(perf["win_rate"], 4) == 0.6177
    assert perf["venues"] == ["legacy", "live"] and perf["analyses"] == res["analyses_imported"]
    assert count(engine, "analyses", "venue = 'legacy'") == res["analyses_imported"]
    assert count(engine, "rejected_rows") == planted["analyses_unimportable"] + planted["trades_unimportable"]


def test_a_second_run_imports_nothing(engine, legacy_small):
    path, _ = legacy_small
    first = migrate_legacy(engine, path)
    again = migrate_legacy(engine, path)
    assert again["analyses_imported"] == again["trades_imported"] == 0
    assert again["analyses_already_present"] == first["analyses_imported"]
    assert count(engine, "analyses") == first["analyses_imported"]
    assert count(engine, "rejected_rows") == first["analyses_rejected"] + first["trades_rejected"]


def test_an_interrupted_run_rerun_ends_complete_without_duplicates(engine, legacy_small):
    path, _ = legacy_small
    def boom(n):
        if n == 2: raise KeyboardInterrupt("power cut")
    with pytest.raises(KeyboardInterrupt):
        migrate_legacy(engine, path, batch_size=500, on_batch=boom)
    partial = count(engine, "analyses") + count(engine, "rejected_rows")
    assert partial == 1000  # two batches committed (imported or rejected), nothing of the third
    migrate_legacy(engine, path, batch_size=500)
    clean = migrate_legacy(engine, path, dry_run=True)
    assert count(engine, "analyses") == clean["analyses_already_present"] and clean["analyses_imported"] == 0
    with engine.connect() as c:
        dup = c.exec_driver_sql("select count(*) - count(distinct external_id) from trades").scalar()
    assert dup == 0


def test_a_dry_run_writes_nothing(engine, legacy_small):
    res = migrate_legacy(engine, legacy_small[0], dry_run=True)
    assert res["analyses_imported"] > 0 and count(engine, "analyses") == 0 and count(engine, "rejected_rows") == 0


def test_messy_fields_are_normalised(engine, legacy_small):
    migrate_legacy(engine, legacy_small[0])
    with engine.connect() as c:
        recs = {r[0] for r in c.exec_driver_sql("select distinct recommendation from analyses")}
        syms = {r[0] for r in c.exec_driver_sql("select distinct symbol from analyses")}
        tfs = {r[0] for r in c.exec_driver_sql("select distinct timeframe from analyses")}
        confs = c.scalars(sa.select(Analysis.confidence).where(Analysis.confidence.is_not(None))).all()
        statuses = {r[0] for r in c.exec_driver_sql("select distinct status from trades")}
        sides = {r[0] for r in c.exec_driver_sql("select distinct side from trades")}
        pvs = {r[0] for r in c.exec_driver_sql("select distinct prompt_version from analyses")}
    assert recs == {"LONG", "SHORT", "HOLD"} and syms <= {"BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"}
    assert tfs <= {"15", "60", "240", "D"} and all(0 <= x <= 1 for x in confs)
    assert statuses <= {"open", "closed", "cancelled", "pending"} and sides == {"LONG", "SHORT"}
    assert "v1-unknown" in pvs


def test_a_trade_takes_the_prompt_version_of_its_analysis_and_orphans_are_kept_unlinked(engine, legacy_small):
    migrate_legacy(engine, legacy_small[0])
    with engine.connect() as c:
        bad = c.exec_driver_sql("""select count(*) from trades t join analyses a on a.id = t.analysis_id
                                   where t.prompt_version <> a.prompt_version""").scalar()
        orphans = c.exec_driver_sql("select notes from trades where analysis_id is null").fetchall()
    assert bad == 0 and orphans and all("link left empty" in (n or "") or n is None for (n,) in orphans)


def test_rejected_rows_carry_their_reason_and_raw_row(sqlite_engine, legacy_small):
    migrate_legacy(sqlite_engine, legacy_small[0])
    with sqlite_engine.connect() as c:
        rows = c.exec_driver_sql("select source, reason, raw from rejected_rows").fetchall()
    assert rows and all(r[1] and json.loads(r[2])["id"] for r in rows)
    reasons = " | ".join(r[1] for r in rows)
    assert "symbol" in reasons and "timestamp" in reasons


def test_a_file_that_is_not_sqlite_is_one_clear_error(tmp_path, sqlite_engine):
    p = tmp_path / "x.db"; p.write_text("hello")
    with pytest.raises(TradelabError, match="not an SQLite database"):
        migrate_legacy(sqlite_engine, p)


def test_a_database_without_the_legacy_tables_is_refused(tmp_path, sqlite_engine):
    p = tmp_path / "other.db"
    sqlite3.connect(p).executescript("create table foo(x); insert into foo values (1);")
    with pytest.raises(TradelabError, match="no table 'analysis_results'"):
        migrate_legacy(sqlite_engine, p)
    assert count(sqlite_engine, "analyses") == 0


def test_a_locked_export_is_one_clear_error(tmp_path, sqlite_engine):
    p = tmp_path / "locked.db"
    make_legacy_db(p, 600, 400, seed=2)
    holder = sqlite3.connect(p, isolation_level=None)
    holder.execute("pragma locking_mode = exclusive"); holder.execute("begin exclusive")
    try:
        with pytest.raises(TradelabError, match="locked"):
            migrate_legacy(sqlite_engine, p)
    finally:
        holder.close()


def test_a_write_failure_mid_import_rolls_back_the_batch_and_a_rerun_completes(tmp_path, legacy_small):
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(f"sqlite:///{tmp_path}/t.db"); upgrade(eng)
    with eng.begin() as c:  # a full disk looks like this to SQLite: writes fail after some pages
        c.exec_driver_sql("pragma max_page_count = 60")
    @sa.event.listens_for(eng, "connect")
    def small(dbapi, rec): dbapi.execute("pragma max_page_count = 60")
    eng.dispose()
    with pytest.raises(TradelabError, match="rolled back"):
        migrate_legacy(eng, legacy_small[0], batch_size=200)
    stuck = count(eng, "analyses")
    assert stuck % 200 == 0  # whole batches only
    sa.event.remove(eng, "connect", small); eng.dispose()
    with eng.begin() as c: c.exec_driver_sql("pragma max_page_count = 1073741823")
    res = migrate_legacy(eng, legacy_small[0], batch_size=200)
    assert res["analyses_already_present"] == stuck and count(eng, "analyses") == stuck + res["analyses_imported"]


def test_migrate_legacy_command_prints_the_contract_json(data_dir, legacy_small, capsys):
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["migrate-legacy", str(legacy_small[0]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out)[:6] == ["analyses_read", "analyses_imported", "analyses_rejected",
                             "trades_read", "trades_imported", "trades_rejected"]
    assert main(["migrate-legacy", str(legacy_small[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["analyses_imported"] == 0
