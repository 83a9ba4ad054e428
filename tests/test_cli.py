"""The `tradelab` console script as a user runs it: a real subprocess, real databases."""
import json, os, subprocess, sys
from pathlib import Path

from tradelab.migrate import head_revision

ROOT = Path(__file__).resolve().parents[1]
TL = str(ROOT / ".venv" / "bin" / "tradelab")


def run(*args, env=None, cwd=ROOT, input=None):
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    e.update(env or {})
    return subprocess.run([TL, *args], capture_output=True, text=True, env=e, cwd=cwd, input=input, timeout=280)


def test_db_upgrade_creates_the_embedded_sqlite_database(tmp_path):
    r = run("db", "upgrade", env={"TRADELAB_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tradelab.db").exists() and f"-> {head_revision()}" in r.stdout
    again = run("db", "upgrade", env={"TRADELAB_DATA_DIR": str(tmp_path)})
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_db_upgrade_works_on_postgresql(pg_url):
    r = run("db", "upgrade", env={"DATABASE_URL": pg_url})
    assert r.returncode == 0, r.stderr
    cur = run("db", "current", env={"DATABASE_URL": pg_url})
    assert f"at {head_revision()}" in cur.stdout


def test_an_unreachable_database_url_is_one_line_and_non_zero(tmp_path):
    env = {"DATABASE_URL": "postgresql+psycopg://bob:pw@127.0.0.1:1/x", "TRADELAB_DATA_DIR": str(tmp_path)}
    r = run("db", "upgrade", env=env)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the database" in lines[0] and ":pw@" not in lines[0]


def test_a_malformed_settings_file_stops_the_command_and_writes_nothing(tmp_path):
    bad = tmp_path / "settings.ini"
    bad.write_text("[risk]\nmax_slots = many\n")
    d = tmp_path / "data"
    assert run("db", "upgrade", env={"TRADELAB_DATA_DIR": str(d)}).returncode == 0
    before = (d / "tradelab.db").stat().st_mtime_ns
    r = run("--settings", str(bad), "config", "set", "risk.min_confidence", "0.7", env={"TRADELAB_DATA_DIR": str(d)})
    assert r.returncode == 1
    assert r.stderr.strip() == (f"tradelab: error: {bad} [risk] max_slots = 'many': "
                                "Input should be a valid integer, unable to parse string as an integer")
    assert (d / "tradelab.db").stat().st_mtime_ns == before


def test_commands_refuse_an_unmigrated_database(tmp_path):
    r = run("report", "performance", "--json", env={"TRADELAB_DATA_DIR": str(tmp_path)})
    assert r.returncode == 1 and "run `tradelab db upgrade` first" in r.stderr


def test_config_show_masks_secrets(tmp_path):
    env = {"TRADELAB_DATA_DIR": str(tmp_path), "OPENAI_API_KEY": "not-a-key-masking-probe-1", "BYBIT_API_KEY": "k3y"}
    run("db", "upgrade", env=env)
    r = run("config", "show", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["environment"]["openai_api_key"] == "***" and out["settings"]["risk"]["max_slots"] == 5
    assert "masking-probe" not in r.stdout and "k3y" not in r.stdout


def test_report_performance_json_has_the_contract_keys(tmp_path):
    env = {"TRADELAB_DATA_DIR": str(tmp_path)}
    run("db", "upgrade", env=env)
    for extra in ([], ["--duckdb"]):
        r = run("report", "performance", "--json", *extra, env=env)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert {"analyses", "open_trades", "closed_trades", "wins", "losses", "win_rate", "total_pnl",
                "max_drawdown"} <= out.keys()


def _store(tmp_path):
    "A migrated embedded store for the subprocess, and an engine on it for the test."
    from tradelab.db import make_engine
    env = {"TRADELAB_DATA_DIR": str(tmp_path)}
    assert run("db", "upgrade", env=env).returncode == 0
    return env, make_engine(f"sqlite:///{tmp_path}/tradelab.db")


def test_status_json_shows_the_drawdown_rule_firing_from_the_true_equity_peak(tmp_path):
    import datetime as dt
    from sqlalchemy.orm import Session
    from tradelab.core import D
    from tradelab.db import EquitySnapshot
    from tradelab.simulator import start_in_thread
    env, eng = _store(tmp_path)
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    with Session(eng) as s, s.begin():
        s.add_all([EquitySnapshot(venue="sim", equity=D(9500), at=yesterday),
                   EquitySnapshot(venue="sim", equity=D(11500), at=yesterday + dt.timedelta(minutes=1))])
    sim = start_in_thread()  # the account starts at 10,000 USDT
    try: r = run("status", "--venue", "sim", "--json", env={**env, "BYBIT_BASE_URL": sim.url})
    finally: sim.stop()
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert {"venue", "equity", "peak_equity", "drawdown", "daily_pnl", "halted", "open_trades", "pending_trades",
            "open_positions", "entries_allowed", "blocked_by"} <= st.keys()
    assert st["venue"] == "sim" and D(st["equity"]) == 10000 and D(st["peak_equity"]) == 11500
    assert round(st["drawdown"] * 100, 2) == 13.04 and st["entries_allowed"] is False
    assert [b.split(":")[0] for b in st["blocked_by"]] == ["max_drawdown"] and st["open_positions"] == []


def test_report_venue_picks_whose_trades_count_and_the_output_says_which(tmp_path):
    from sqlalchemy.orm import Session
    from tradelab.core import D
    from tradelab.db import Trade
    env, eng = _store(tmp_path)
    with Session(eng) as s, s.begin():
        s.add_all([Trade(venue=v, symbol="BTCUSDT", side="LONG", status="closed", qty=D(1), pnl=D(p),
                         prompt_version="p@1") for v, p in (("legacy", "5"), ("paper", "50"), ("paper", "-20"))])
    r = run("report", "performance", "--json", env=env)
    out = json.loads(r.stdout)
    assert out["closed_trades"] == 1 and out["venues"] == ["legacy", "live"]
    out = json.loads(run("report", "performance", "--venue", "paper", "--json", env=env).stdout)
    assert out["closed_trades"] == 2 and out["total_pnl"] == 30 and out["venues"] == ["paper"]
    (row,) = json.loads(run("report", "prompts", "--venue", "paper", "--venue", "legacy", "--json", env=env).stdout)
    assert row["closed_trades"] == 3
    text = run("report", "prompts", env=env).stdout
    assert text.splitlines()[0] == "venues: legacy, live"


def test_config_validate_names_the_bad_key_and_changes_nothing(tmp_path):
    env, _ = _store(tmp_path)
    bad = tmp_path / "bad.ini"; bad.write_text("[trading]\nvenue = moon\n")
    r = run("--settings", str(bad), "config", "validate", env=env)
    assert r.returncode == 1 and "[trading] venue = 'moon'" in r.stdout
    ok = run("config", "validate", env=env)
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": ok")


def test_the_package_imports_without_jupyter():
    code = "import sys, tradelab.cli, tradelab.db, tradelab.analytics; assert 'IPython' not in sys.modules; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
