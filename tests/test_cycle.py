"""The trading cycle: the same code on the backtest venue, the simulator (through pybit) and with the kill switch."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.core import D, ManualClock
from tradelab.cycle import act_on, make_port, run_cycle
from tradelab.db import EquitySnapshot, Order, RejectedRow, Trade, Analysis
from tradelab.killswitch import set_halted
from tradelab.paper import synthetic_port
from tradelab.settings import Settings, load_env
from tradelab.simulator import start_in_thread


@pytest.fixture(autouse=True)
def _prompts(monkeypatch, request):
    monkeypatch.setenv("TRADELAB_PROMPTS_DIR", str(request.config.rootpath / "prompts"))


def _run(engine, port, clock, settings, n):
    out = []
    for _ in range(n):
        out.append(run_cycle(engine, port, settings, clock=clock))
        clock.advance(hours=4); port.step()
    return out


def test_cycles_on_the_backtest_venue_open_and_close_trades_and_account_for_every_signal(engine):
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    runs = _run(engine, port, clock, Settings(), 24)
    signals = sum(r["signals"] for r in runs)
    actions = [a for r in runs for a in r["actions"]]
    assert signals == len(actions) > 0  # every signal was acted on or refused, none dropped
    with Session(engine) as s:
        trades = s.scalars(sa.select(Trade)).all()
        refused = s.scalar(sa.select(sa.func.count()).select_from(RejectedRow).where(RejectedRow.source == "risk"))
        snaps = s.scalar(sa.select(sa.func.count()).select_from(EquitySnapshot))
        orders = s.scalars(sa.select(Order)).all()
    assert len(trades) == sum(a["decision"] in ("placed", "order rejected") for a in actions)
    assert refused == sum(a["decision"] == "rejected" for a in actions)
    assert snaps == 24
    assert any(t.status == "closed" for t in trades), "stops and targets are hit over four days"
    for t in trades:
        if t.status == "closed":
            assert t.pnl is not None and t.close_reason in ("take_profit", "stop_loss", "closed on the exchange")
    assert len({o.client_order_id for o in orders}) == len(orders)


def test_acting_twice_on_one_analysis_places_one_order_and_one_trade(sqlite_engine):
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    st = Settings()
    last = port.ticker("BTCUSDT").last
    with Session(sqlite_engine, expire_on_commit=False) as s, s.begin():
        a = Analysis(symbol="BTCUSDT", timeframe="60", prompt_version="technical@1", recommendation="LONG", confidence=D("0.8"),
                     entry_price=last, stop_loss=last * D("0.98"), take_profit=last * D("1.05"), status="accepted", source="live",
                     created_at=clock.now())
        s.add(a)
    res = {"id": a.id, "symbol": "BTCUSDT", "recommendation": "LONG", "entry_price": str(last), "stop_loss": str(a.stop_loss),
           "take_profit": str(a.take_profit), "confidence": "0.8", "prompt_version": "technical@1"}
    from tradelab.cycle import _account
    first = act_on(sqlite_engine, port, res, st, "backtest", clock, _account(sqlite_engine, port, "backtest", clock))
    again = act_on(sqlite_engine, port, res, st, "backtest", clock, _account(sqlite_engine, port, "backtest", clock))
    assert first["decision"] == again["decision"] == "placed" and first["order"] == again["order"]
    assert len(port.engine.orders) == 1
    with Session(sqlite_engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Trade)) == 1


def test_the_kill_switch_stops_new_orders_but_analysis_and_snapshots_go_on(sqlite_engine):
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    set_halted(sqlite_engine, True, "test", "drill", clock)
    runs = _run(sqlite_engine, port, clock, Settings(), 12)
    assert all(r["halted"] for r in runs) and sum(r["analyses"] for r in runs) == 12 * 6
    assert all(a["decision"] == "skipped" and a["reason"] == "kill switch" for r in runs for a in r["actions"])
    assert len(port.engine.orders) == 0


def test_a_cycle_against_the_simulator_goes_through_pybit_and_lands_in_the_database(sqlite_engine, monkeypatch):
    sim = start_in_thread()
    try:
        monkeypatch.setenv("BYBIT_BASE_URL", sim.url)
        for k in ("BYBIT_API_KEY", "BYBIT_API_SECRET"): monkeypatch.delenv(k, raising=False)
        st = Settings.model_validate({"trading": {"symbols": "BTCUSDT, ETHUSDT", "timeframes": "60"}})
        port = make_port(load_env(), st)
        res = run_cycle(sqlite_engine, port, st)
        assert res["venue"] == "sim" and res["analyses"] == 2 and not res["errors"]
        with Session(sqlite_engine) as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Analysis)) == 2
            assert s.scalar(sa.select(EquitySnapshot.equity)) == port.equity()
        placed = [a for a in res["actions"] if a["decision"] == "placed"]
        assert len(sim.call(lambda: list(sim.engine.orders))) == len(placed)
    finally:
        sim.stop()


def test_a_live_venue_without_keys_is_a_clear_error(monkeypatch):
    for k in ("BYBIT_API_KEY", "BYBIT_API_SECRET"): monkeypatch.delenv(k, raising=False)
    st = Settings.model_validate({"trading": {"venue": "testnet"}})
    with pytest.raises(Exception, match="BYBIT_API_KEY"):
        make_port(load_env(), st)


def test_charts_dropped_in_the_watch_folder_are_analysed_once_and_unusable_files_are_recorded(sqlite_engine, tmp_path, data_dir):
    from tradelab.charts import render_chart
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    folder = tmp_path / "inbox"; folder.mkdir()
    (folder / "BTCUSDT_60_0603.png").write_bytes(render_chart(port.klines("BTCUSDT", "60", limit=120), "BTCUSDT", "60"))
    (folder / "ETHUSDT_240_broken.png").write_bytes(b"not an image")
    (folder / "screenshot.png").write_bytes(render_chart(port.klines("ETHUSDT", "60", limit=120), "ETHUSDT", "60"))
    st = Settings.model_validate({"trading": {"symbols": "SOLUSDT", "timeframes": "60"}, "analysis": {"watch_folder": str(folder)}})
    first = run_cycle(sqlite_engine, port, st, clock=clock)
    second = run_cycle(sqlite_engine, port, st, clock=clock)
    assert first["analyses"] == 2 and second["analyses"] == 1  # the chart once, SOLUSDT's rendered chart each cycle (cached)
    with Session(sqlite_engine) as s:
        a = s.scalars(sa.select(Analysis).where(Analysis.symbol == "BTCUSDT")).one()
        reasons = dict(s.execute(sa.select(RejectedRow.source_id, RejectedRow.reason).where(RejectedRow.source == "watch_folder")).all())
    assert a.image_path.endswith("BTCUSDT_60_0603.png") and a.status == "accepted"
    assert len(reasons) == 2 and any("SYMBOL_TIMEFRAME" in r for r in reasons.values())
    assert any("broken" in k for k in reasons)


def test_a_model_that_hangs_or_answers_prose_is_recorded_and_the_cycle_goes_on(sqlite_engine, monkeypatch, data_dir):
    from tradelab.fakellm import start_fake_llm
    fake = start_fake_llm()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url); monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-cycle-probe")
        fake.push("hang", 3).push("text", "Looks bullish to me!")  # BTCUSDT's chart never answered, ETHUSDT's in prose
        clock = ManualClock("2024-06-03T00:00:00Z")
        st = Settings.model_validate({"trading": {"symbols": "BTCUSDT,ETHUSDT", "timeframes": "60"},
                                      "analysis": {"prompts": "chart_read@1,technical@1", "timeout_seconds": 0.5, "max_retries": 0}})
        out = run_cycle(sqlite_engine, synthetic_port(clock), st, env=load_env(), clock=clock)
    finally: fake.stop()
    assert len(out["errors"]) == 1 and out["errors"][0].startswith("BTCUSDT 60 chart_read@1") and "did not answer" in out["errors"][0]
    assert out["analyses"] == 3 and out["accepted"] == 2  # both technical reads went on; the prose answer is a rejection
    with Session(sqlite_engine) as s:
        rows = {(a.symbol, a.prompt_version): (a.status, a.reject_reason) for a in s.scalars(sa.select(Analysis))}
    assert rows[("BTCUSDT", "chart_read@1")][0] == "error"
    assert rows[("ETHUSDT", "chart_read@1")][0] == "rejected" and "not JSON" in rows[("ETHUSDT", "chart_read@1")][1]
    assert rows[("BTCUSDT", "technical@1")][0] == rows[("ETHUSDT", "technical@1")][0] == "accepted"
    assert len(out["actions"]) == out["signals"]
