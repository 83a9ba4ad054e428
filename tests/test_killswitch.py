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
