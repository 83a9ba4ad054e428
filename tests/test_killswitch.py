"""The kill switch is shared state: every process on the database sees it, every flip is audited."""
import sqlalchemy as sa
from tradelab.cli import main
from tradelab.db import AuditLog, make_engine, database_url
from tradelab.killswitch import is_halted, set_halted, state


def test_halting_is_seen_by_any_engine_on_the_same_database(engine):
    set_halted(engine, True, "alice", "news spike")
    other = make_engine(engine.url.render_as_string(hide_password=False))
    assert is_halted(other) and state(other)["reason"] == "news spike"
    set_halted(engine, False, "bob")
    assert not is_halted(other)
    with engine.connect() as c:
        acts = [r[0] for r in c.execute(sa.select(AuditLog.action).order_by(AuditLog.id))]
    assert acts == ["halt", "resume"]
    other.dispose()


def test_halt_and_resume_commands_flip_the_switch(data_dir, capsys):
    assert main(["db", "upgrade"]) == 0
    assert main(["halt", "--reason", "testing"]) == 0
    assert "halted" in capsys.readouterr().out
    eng = make_engine(database_url())
    assert is_halted(eng)
    assert main(["resume"]) == 0 and not is_halted(eng)
    eng.dispose()


def test_halt_close_all_closes_every_position_on_the_venue_and_says_so(data_dir, capsys, monkeypatch):
    from tradelab.simulator import start_in_thread
    sim = start_in_thread()
    monkeypatch.setenv("BYBIT_BASE_URL", sim.url)
    try:
        assert main(["db", "upgrade"]) == 0
        for sym, side, qty in (("BTCUSDT", "Buy", "0.01"), ("ETHUSDT", "Sell", "0.1")):
            sim.call(sim.engine.place, {"category": "linear", "symbol": sym, "side": side, "orderType": "Market",
                                        "qty": qty, "orderLinkId": f"outside-{sym}"})
        capsys.readouterr()
        assert main(["halt", "--close-all", "--venue", "sim", "--reason", "flash crash"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("trading halted") and "symbol=BTCUSDT" in out and "symbol=ETHUSDT" in out
        assert sim.call(lambda: [p for p in sim.engine.positions(None) if float(p["size"])]) == []
        eng = make_engine(database_url())
        assert is_halted(eng) and state(eng)["reason"] == "flash crash"
        eng.dispose()
    finally:
        sim.stop()


def test_the_kill_switch_module_knows_nothing_of_the_cli_or_orders():
    import tradelab.killswitch as ks
    assert not hasattr(ks, "add_cli") and not hasattr(ks, "_cmd")
