"""The desk's Telegram bot: python-telegram-bot for real, against the fake Bot API server on loopback, over a real
simulator port and a real SQLite database."""
import logging, shutil, time
from types import SimpleNamespace as NS

import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab import killswitch
from tradelab.core import D, SystemClock
from tradelab.db import AuditLog, make_engine
from tradelab.events import LocalBus
from tradelab.exchange import OrderRequest
from tradelab.faketelegram import start_fake_telegram
from tradelab.migrate import upgrade
from tradelab.settings import Settings, load_env
from tradelab.simulator import start_in_thread
from tradelab.telegram import Telegram
from tradelab.venues import make_port

TOKEN = "123456:TEST-secret-token-do-not-log"
CHAT, OTHER, GROUP, STRANGER = 4242, 4343, -100777, 999


def wait(pred, timeout: float = 10):
    "Poll `pred` until true or `timeout`; the last value."
    end = time.monotonic() + timeout
    while not (v := pred()) and time.monotonic() < end: time.sleep(0.02)
    return v


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    "A migrated SQLite file, made once for this module (migrating takes about a second)."
    path = tmp_path_factory.mktemp("telegram") / "template.db"
    eng = make_engine(f"sqlite:///{path}"); upgrade(eng); eng.dispose()
    return path


@pytest.fixture
def db(migrated, tmp_path):
    "A fresh copy of the migrated database for each test."
    shutil.copy(migrated, tmp_path / "tradelab.db")
    eng = make_engine(f"sqlite:///{tmp_path}/tradelab.db")
    yield eng
    eng.dispose()


@pytest.fixture
def sim():
    h = start_in_thread(rate_limits={"order": 100_000, "read": 100_000, "position": 100_000})
    yield h
    h.stop()


@pytest.fixture
def fake():
    f = start_fake_telegram(token=TOKEN)
    yield f
    f.stop()


@pytest.fixture
def bus():
    b = LocalBus().start()
    yield b
    b.stop()


@pytest.fixture
def port(db, sim):
    "The simulator's exchange port, as the desk makes it (venue sim, BYBIT_BASE_URL at the simulator)."
    return make_port(db, load_env(bybit_base_url=sim.url), Settings(), SystemClock())


@pytest.fixture
def make_bot(db, fake, bus):
    "Start a bot for a desk on `venue` over `port` (any venue name over the simulator); stopped within 5 s at the end."
    bots, clock = [], SystemClock()

    def make(venue="sim", chats=(CHAT, OTHER), totp_secret=None, port=None):
        desk = NS(engine=db, port=port, venue=venue, clock=clock, settings=Settings)
        bot = Telegram(TOKEN, set(chats), desk, bus, base_url=fake.base_url, totp_secret=totp_secret).start()
        bots.append(bot)
        assert bot.state()["ok"], bot.state()
        return bot
    yield make
    for bot in bots:
        t0 = time.monotonic(); bot.stop(timeout=5)
        assert not bot.thread.is_alive() and time.monotonic() - t0 < 5


def texts(fake, chat):
    return [m["text"] for m in fake.messages(chat)]


def ask(fake, chat, text):
    "Type `text` in `chat` and wait for the bot's next message there; its text."
    n = len(fake.messages(chat))
    fake.send_update(chat, text)
    assert wait(lambda: len(fake.messages(chat)) > n), f"no reply to {text!r}"
    return fake.messages(chat)[n]["text"]


def open_position(bot, symbol="BTCUSDT", qty="0.01"):
    bot.desk.port.place_order(OrderRequest(symbol, "Buy", D(qty), "Market", order_link_id=f"t-{time.time_ns()}"))
    assert wait(lambda: any(p.size for p in bot.desk.port.positions(symbol)))


def audits(engine, actor=None):
    with Session(engine) as s:
        q = sa.select(AuditLog).order_by(AuditLog.id)
        return [(a.actor, a.action, a.target, a.details) for a in s.scalars(q) if actor in (None, a.actor)]


def test_an_event_on_the_bus_reaches_every_allowed_chat_as_a_message(make_bot, bus, fake):
    make_bot()
    bus.publish("trade.closed", trade_id=7, venue="sim", symbol="BTCUSDT", side="LONG", qty="0.01", pnl="12.5",
                close_reason="take_profit")
    bus.publish("tick", symbol="BTCUSDT", mark="65000")  # not worth a message
    assert wait(lambda: texts(fake, CHAT) and texts(fake, OTHER))
    for chat in (CHAT, OTHER):
        assert texts(fake, chat) == ["Closed BTCUSDT LONG 0.01 on sim (trade #7): PnL 12.5 (take_profit)"]
    assert fake.messages(STRANGER) == []


def test_a_hold_analysis_is_not_sent_but_an_accepted_signal_is(make_bot, bus, fake):
    make_bot(chats=(CHAT,))
    bus.publish("analysis.stored", analysis_id=1, status="accepted", recommendation="HOLD", symbol="ETHUSDT")
    bus.publish("analysis.stored", analysis_id=2, status="accepted", recommendation="LONG", symbol="ETHUSDT",
                timeframe="60", confidence=0.8)
    assert wait(lambda: texts(fake, CHAT))
    assert texts(fake, CHAT) == ["Signal LONG ETHUSDT 60 confidence 0.8 (analysis #2)"]


def test_thirty_events_in_a_burst_arrive_batched_in_few_messages_within_the_rate_limit(make_bot, bus, fake):
    make_bot(chats=(CHAT, GROUP))
    for i in range(30):
        bus.publish("run.failed", pipeline="trading_cycle", run_key=f"key-{i}", error="boom")
        time.sleep(0.07)  # about two seconds of events: more than one message per chat is needed
    lines = lambda chat: [ln for t in texts(fake, chat) for ln in t.splitlines() if "Run failed" in ln]
    assert wait(lambda: len(lines(CHAT)) == 30 and len(lines(GROUP)) == 30)
    assert [ln.split()[-2] for ln in lines(CHAT)] == [f"key-{i}:" for i in range(30)]  # in order, none lost
    for chat, interval in ((CHAT, 1.0), (GROUP, 3.0)):
        sent = [at for m, p, at in fake.requests if m == "sendMessage" and p["chat_id"] == chat]
        assert 2 <= len(sent) <= 4, len(sent)
        assert all(b - a >= interval for a, b in zip(sent, sent[1:])), sent
    assert any(" events:\n- Run failed" in t for t in texts(fake, CHAT))


def test_a_429_from_telegram_delays_the_message_without_losing_it(make_bot, bus, fake):
    make_bot(chats=(CHAT,))
    fake.fail_next("sendMessage", retry_after=1)
    bus.publish("desk.halted", halted=True, by="alice", reason="news")
    assert wait(lambda: texts(fake, CHAT)) and texts(fake, CHAT) == ["HALTED by alice: news"]
    tries = [at for m, _, at in fake.requests if m == "sendMessage"]
    assert len(tries) == 2 and tries[1] - tries[0] >= 1


def test_status_and_positions_answer_from_the_service_layer(make_bot, fake, port):
    bot = make_bot(port=port)
    open_position(bot)
    status = ask(fake, CHAT, "/status")
    assert status.startswith("Venue sim: equity ") and "running; entries allowed" in status
    assert "positions 1" in status
    positions = ask(fake, OTHER, "/positions")
    assert positions.startswith("BTCUSDT LONG 0.01 @ ") and "uPnL" in positions
    assert [a[2] for a in audits(bot.desk.engine) if a[1] == "telegram.command"] == ["status", "positions"]


def test_halt_then_resume_flip_the_kill_switch_and_are_audited(make_bot, fake):
    bot = make_bot()
    assert ask(fake, CHAT, "/halt news at noon").startswith("Halted")
    st = killswitch.state(bot.desk.engine)
    assert st["halted"] and st["by"] == f"telegram:{CHAT}" and st["reason"] == "news at noon"
    assert ask(fake, OTHER, "/resume").startswith("Resumed")
    assert not killswitch.is_halted(bot.desk.engine)
    mine = [(a[1], a[2]) for a in audits(bot.desk.engine) if a[0].startswith("telegram:")]
    assert mine == [("halt", "kill_switch"), ("telegram.command", "halt"),
                    ("resume", "kill_switch"), ("telegram.command", "resume")]


def test_editing_an_old_command_does_not_run_it_again(make_bot, fake):
    bot = make_bot(chats=(CHAT,))
    fake.send_update(CHAT, "/halt", edited=True)
    assert ask(fake, CHAT, "/help").startswith("/status")  # the edit came before, and was not taken
    assert not killswitch.is_halted(bot.desk.engine)
    assert [a[2] for a in audits(bot.desk.engine) if a[1] == "telegram.command"] == ["help"]


def test_a_command_from_an_unknown_chat_is_ignored_and_audited(make_bot, fake):
    bot = make_bot()
    fake.send_update(STRANGER, "/halt")
    assert wait(lambda: audits(bot.desk.engine, f"telegram:{STRANGER}"))
    assert audits(bot.desk.engine, f"telegram:{STRANGER}") == [(f"telegram:{STRANGER}", "telegram.ignored", None,
                                                                 {"text": "/halt"})]
    assert not killswitch.is_halted(bot.desk.engine) and fake.messages(STRANGER) == []
    assert ask(fake, CHAT, "/help").startswith("/status")  # still answering the allowed chats


def test_on_the_live_venue_close_needs_a_fresh_totp_code_that_cannot_be_replayed(make_bot, fake, port):
    secret = pyotp.random_base32()
    bot = make_bot(venue="live", totp_secret=secret, port=port)
    open_position(bot)
    totp = pyotp.TOTP(secret)
    valid = {totp.at(time.time() + d) for d in (-30, 0, 30)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    assert "needs a fresh TOTP code" in ask(fake, CHAT, "/close BTCUSDT")
    assert "needs a fresh TOTP code" in ask(fake, OTHER, f"/close BTCUSDT {wrong}")
    assert any(p.size for p in bot.desk.port.positions("BTCUSDT"))  # nothing was closed
    assert ask(fake, CHAT, "/halt").startswith("Halted")  # halting is the safe direction: no code
    code = totp.now()
    assert ask(fake, OTHER, f"/close BTCUSDT {code}").startswith("Closing BTCUSDT Buy 0.01: order ")
    assert wait(lambda: not any(p.size for p in bot.desk.port.positions("BTCUSDT")))
    assert "needs a fresh TOTP code" in ask(fake, CHAT, f"/resume {code}")  # the same code, replayed
    assert killswitch.is_halted(bot.desk.engine)
    details = [a[3] for a in audits(bot.desk.engine) if a[1] == "telegram.command"]
    assert [d["outcome"] for d in details] == ["refused", "refused", "ok", "ok", "refused"]
    assert code not in str(details) and wrong not in str(details)  # codes are not stored


def test_the_daily_summary_is_sent_to_every_chat(make_bot, fake, port):
    bot = make_bot(port=port)
    text = bot.send_daily_summary()
    assert text.startswith("Daily summary ") and "Last 24 h: 0 trades closed" in text
    assert texts(fake, CHAT) == [text] and texts(fake, OTHER) == [text]
    assert bot.send_daily_summary(wait=False) is None  # from a bus subscriber: done on the bot's thread
    assert wait(lambda: len(texts(fake, CHAT)) == 2 and len(texts(fake, OTHER)) == 2)


def test_the_bot_token_never_appears_in_the_logs(make_bot, bus, fake, caplog):
    caplog.set_level(logging.DEBUG)
    bot = make_bot(chats=(CHAT,))
    bus.publish("stream.lost", stream="private", error="connection reset")
    assert wait(lambda: texts(fake, CHAT)) and texts(fake, CHAT) == ["Stream lost: private connection reset"]
    assert ask(fake, CHAT, "/pnl").startswith("Venue sim: 0 closed trades")
    bot.stop()
    assert "bot***/getUpdates" in caplog.text and "sendMessage" in caplog.text  # the client's URLs were logged...
    assert TOKEN not in caplog.text and TOKEN.split(":")[1] not in caplog.text  # ...without the token
    assert all(TOKEN not in r.getMessage() for r in caplog.records) and TOKEN not in repr(bot)


def test_a_refused_token_leaves_the_bot_not_ok_and_retrying_without_naming_the_token(db, fake, caplog):
    desk = NS(engine=db, port=None, venue="sim", clock=SystemClock(), settings=Settings)
    bot = Telegram("999:wrong-token", {CHAT}, desk, base_url=fake.base_url).start()  # the fake knows only TOKEN
    try:
        st = bot.state()
        assert st["ok"] is False and "rejected" in st["error"] and "wrong-token" not in str(st)
        assert "wrong-token" not in caplog.text
    finally:
        bot.stop(timeout=5)
    assert not bot.thread.is_alive() and [m for m, _, _ in fake.requests] == ["getMe"]
