"""The trading cycle: the same code on the backtest venue, the simulator (through pybit) and with the kill switch."""
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.core import D, ManualClock
from tradelab.bybit import BybitPort, make_http
from tradelab.core import TradelabError
from tradelab.cycle import account_state, act_on, run_cycle
from tradelab.db import EquitySnapshot, Order, RejectedRow, Trade, Analysis
from tradelab.orders import reconcile
from tradelab import trades
from tradelab.killswitch import set_halted
from tradelab.paper import synthetic_port
from tradelab.settings import Settings, load_env
from tradelab.simulator import start_in_thread


@pytest.fixture(autouse=True)
def _prompts(monkeypatch, request):
    monkeypatch.setenv("TRADELAB_PROMPTS_DIR", str(request.config.rootpath / "prompts"))


def _accepted_long(engine, symbol, last, clock) -> dict:
    "An accepted LONG analysis of `symbol` at `last` (stop 2% under, target 5% over), as the cycle passes it on."
    with Session(engine, expire_on_commit=False) as s, s.begin():
        a = Analysis(symbol=symbol, timeframe="60", prompt_version="technical@1", recommendation="LONG",
                     confidence=D("0.8"), entry_price=last, stop_loss=last * D("0.98"), take_profit=last * D("1.05"),
                     status="accepted", source="live", created_at=clock.now())
        s.add(a)
    return {"id": a.id, "symbol": symbol, "recommendation": "LONG", "entry_price": str(last),
            "stop_loss": str(a.stop_loss), "take_profit": str(a.take_profit), "confidence": "0.8",
            "prompt_version": "technical@1"}


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
        rows = s.scalars(sa.select(Trade)).all()
        refused = s.scalar(sa.select(sa.func.count()).select_from(RejectedRow).where(RejectedRow.source == "risk"))
        snaps = s.scalar(sa.select(sa.func.count()).select_from(EquitySnapshot))
        orders = s.scalars(sa.select(Order)).all()
    assert len(rows) == sum(a["decision"] in ("placed", "order rejected") for a in actions)
    assert refused == sum(a["decision"] == "rejected" for a in actions)
    assert snaps == 24
    assert any(t.status == "closed" for t in rows), "stops and targets are hit over four days"
    for t in rows:
        if t.status == "closed":
            # the engine's own TP/SL
            assert t.pnl is not None and t.close_reason in (trades.TAKE_PROFIT, trades.STOP_LOSS)
    assert len({o.client_order_id for o in orders}) == len(orders)


def test_acting_twice_on_one_analysis_places_one_order_and_one_trade(sqlite_engine):
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    st = Settings()
    res = _accepted_long(sqlite_engine, "BTCUSDT", port.ticker("BTCUSDT").last, clock)
    first, again = (act_on(sqlite_engine, port, res, st, "backtest", clock,
                           account_state(sqlite_engine, port, "backtest", clock)) for _ in range(2))
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
        from tradelab.venues import make_port
        port = make_port(sqlite_engine, load_env(), st)
        res = run_cycle(sqlite_engine, port, st)
        assert res["venue"] == "sim" and res["analyses"] == 2 and not res["errors"]
        with Session(sqlite_engine) as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Analysis)) == 2
            assert s.scalar(sa.select(EquitySnapshot.equity)) == port.equity()
        placed = [a for a in res["actions"] if a["decision"] == "placed"]
        assert len(sim.call(lambda: list(sim.engine.orders))) == len(placed)
    finally:
        sim.stop()


def test_a_live_venue_without_keys_is_a_clear_error(monkeypatch, sqlite_engine):
    from tradelab.venues import make_port
    for k in ("BYBIT_API_KEY", "BYBIT_API_SECRET"): monkeypatch.delenv(k, raising=False)
    st = Settings.model_validate({"trading": {"venue": "testnet"}})
    with pytest.raises(Exception, match="BYBIT_API_KEY"):
        make_port(sqlite_engine, load_env(), st)


def test_charts_dropped_in_the_watch_folder_are_analysed_once_and_unusable_files_are_recorded(sqlite_engine, tmp_path,
                                                                                              data_dir):
    from tradelab.charts import render_chart
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    folder = tmp_path / "inbox"; folder.mkdir()
    (folder / "BTCUSDT_60_0603.png").write_bytes(render_chart(port.klines("BTCUSDT", "60", limit=120), "BTCUSDT", "60"))
    (folder / "ETHUSDT_240_broken.png").write_bytes(b"not an image")
    (folder / "screenshot.png").write_bytes(render_chart(port.klines("ETHUSDT", "60", limit=120), "ETHUSDT", "60"))
    st = Settings.model_validate({"trading": {"symbols": "SOLUSDT", "timeframes": "60"},
                                  "analysis": {"watch_folder": str(folder)}})
    first = run_cycle(sqlite_engine, port, st, clock=clock)
    second = run_cycle(sqlite_engine, port, st, clock=clock)
    # the chart once, SOLUSDT's rendered chart each cycle (cached)
    assert first["analyses"] == 2 and second["analyses"] == 1
    with Session(sqlite_engine) as s:
        a = s.scalars(sa.select(Analysis).where(Analysis.symbol == "BTCUSDT")).one()
        q = sa.select(RejectedRow.source_id, RejectedRow.reason).where(RejectedRow.source == "watch_folder")
        reasons = dict(s.execute(q).all())
    assert a.image_path.endswith("BTCUSDT_60_0603.png") and a.status == "accepted"
    assert len(reasons) == 2 and any("SYMBOL_TIMEFRAME" in r for r in reasons.values())
    assert any("broken" in k for k in reasons)


def test_a_model_that_hangs_or_answers_prose_is_recorded_and_the_cycle_goes_on(sqlite_engine, monkeypatch, data_dir):
    from tradelab.fakellm import start_fake_llm
    fake = start_fake_llm()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "not-a-key-cycle-probe")
        fake.push("hang", 3).push("text", "Looks bullish to me!")  # BTCUSDT's chart never answered, ETHUSDT's in prose
        clock = ManualClock("2024-06-03T00:00:00Z")
        st = Settings.model_validate({"trading": {"symbols": "BTCUSDT,ETHUSDT", "timeframes": "60"},
                                      "analysis": {"prompts": "chart_read@1,technical@1", "timeout_seconds": 0.5,
                                                   "max_retries": 0}})
        out = run_cycle(sqlite_engine, synthetic_port(clock), st, env=load_env(), clock=clock)
    finally: fake.stop()
    assert len(out["errors"]) == 1 and out["errors"][0].startswith("BTCUSDT 60 chart_read@1")
    assert "did not answer" in out["errors"][0]
    # both technical reads went on; the prose answer is a rejection
    assert out["analyses"] == 3 and out["accepted"] == 2
    with Session(sqlite_engine) as s:
        rows = {(a.symbol, a.prompt_version): (a.status, a.reject_reason) for a in s.scalars(sa.select(Analysis))}
    assert rows[("BTCUSDT", "chart_read@1")][0] == "error"
    assert rows[("ETHUSDT", "chart_read@1")][0] == "rejected" and "not JSON" in rows[("ETHUSDT", "chart_read@1")][1]
    assert rows[("BTCUSDT", "technical@1")][0] == rows[("ETHUSDT", "technical@1")][0] == "accepted"
    assert len(out["actions"]) == out["signals"]


# --- close reasons come from the exit order, not from prices ---------------------------------------------------------

@pytest.fixture
def sim():
    h = start_in_thread(rate_limits={"order": 100_000, "read": 100_000, "position": 100_000})
    yield h
    h.stop()


def _sim_port(sim):
    http = make_http("testnet", "tradelab-sim", "tradelab-sim-secret", sim.url, timeout=5)
    return BybitPort(http, "sim", backoff=0.01, venue="sim")


def _open_long(engine, port, sim, symbol="ETHUSDT", price="3000"):
    "A LONG trade opened through the cycle's own path (act_on, reconcile, sync), stop 2% under, target 5% over."
    clock = ManualClock("2024-06-03T00:00:00Z")
    sim.set_price(symbol, price)
    res = _accepted_long(engine, symbol, D(price), clock)
    act = act_on(engine, port, res, Settings(), "sim", clock, account_state(engine, port, "sim", clock))
    assert act["decision"] == "placed", act
    _sync(engine, port, clock)
    with Session(engine) as s:
        t = s.scalars(sa.select(Trade).where(Trade.analysis_id == res["id"])).one()
    assert t.status == trades.OPEN and t.qty > 0
    return t, clock


def _sync(engine, port, clock):
    reconcile(engine, port, "sim", clock)
    return trades.sync_trades(engine, port, "sim", clock)


def _closed(engine, trade_id) -> Trade:
    with Session(engine) as s:
        t = s.get(Trade, trade_id)
    assert t.status == trades.CLOSED and t.pnl is not None and t.exit_price is not None
    return t


def _price_guess(t: Trade) -> str:
    "Yesterday's rule: a close at or beyond the target is a take profit, anything else a stop."
    return "take_profit" if (t.side == "LONG") == (t.exit_price >= t.take_profit) else "stop_loss"


def test_a_take_profit_hit_is_recorded_as_take_profit_even_when_the_fill_is_under_the_target(sim, engine):
    port = _sim_port(sim)
    t, clock = _open_long(engine, port, sim)
    sim.set_price("ETHUSDT", t.take_profit)  # the target is touched; the market sell fills at the bid, a bit under it
    assert _sync(engine, port, clock)["closed"] == 1
    t = _closed(engine, t.id)
    assert t.close_reason == trades.TAKE_PROFIT and t.pnl > 0
    assert t.exit_price < t.take_profit and _price_guess(t) == "stop_loss"  # the old guess got this one wrong


def test_a_stop_moved_between_entry_and_target_is_recorded_as_stop_loss(sim, engine):
    port = _sim_port(sim)
    t, clock = _open_long(engine, port, sim)
    sim.set_price("ETHUSDT", "3060")
    trades.modify_tpsl(engine, port, "sim", "ETHUSDT", clock, stop_loss=D("3030"))  # a trailing stop above the entry
    sim.set_price("ETHUSDT", "3030")
    assert _sync(engine, port, clock)["closed"] == 1
    t = _closed(engine, t.id)
    assert t.close_reason == trades.STOP_LOSS and t.stop_loss == D("3030") and t.pnl > 0


def test_a_manual_close_is_recorded_as_manual(sim, engine):
    port = _sim_port(sim)
    t, clock = _open_long(engine, port, sim)
    sim.set_price("ETHUSDT", "3100")
    out = trades.close_position(engine, port, "sim", "ETHUSDT", clock, actor="alice")
    assert out["trade"] == t.id and out["trade_status"] == trades.CLOSED and out["close_reason"] == trades.MANUAL
    t = _closed(engine, t.id)
    assert t.close_reason == trades.MANUAL and _price_guess(t) == "stop_loss"  # a profitable exit guessed as a stop
    with Session(engine) as s:
        assert s.scalars(sa.select(Order.purpose).where(Order.client_order_id == out["order"])).one() == "manual"


def test_the_kill_switch_close_is_recorded_as_kill_switch(sim, engine):
    port = _sim_port(sim)
    t, clock = _open_long(engine, port, sim)
    sim.set_price("ETHUSDT", "2990")
    out = trades.close_all(engine, port, "sim", clock, actor="ops")
    assert [o["close_reason"] for o in out] == [trades.KILL_SWITCH] and not port.positions()
    assert _closed(engine, t.id).close_reason == trades.KILL_SWITCH
    assert trades.close_all(engine, port, "sim", clock) == []


def test_a_stop_or_target_on_the_wrong_side_of_the_mark_is_refused_with_the_reason(sim, sqlite_engine):
    port = _sim_port(sim)
    t, clock = _open_long(sqlite_engine, port, sim)
    with pytest.raises(TradelabError, match="stop loss of a long must be below the mark price 3000"):
        trades.modify_tpsl(sqlite_engine, port, "sim", "ETHUSDT", clock, stop_loss=D("3010"))
    with pytest.raises(TradelabError, match="take profit of a long must be above the mark price"):
        trades.modify_tpsl(sqlite_engine, port, "sim", "ETHUSDT", clock, take_profit=D("2999"))
    assert port.positions("ETHUSDT")[0].stop_loss == t.stop_loss.quantize(D("0.01"))  # unchanged
    out = trades.modify_tpsl(sqlite_engine, port, "sim", "ETHUSDT", clock, take_profit=D("3300"), actor="bob")
    assert out["take_profit"] == "3300" and port.positions("ETHUSDT")[0].take_profit == D("3300")


def test_trade_status_moves_only_along_the_state_machine():
    clock = ManualClock("2024-06-03T00:00:00Z")
    t = Trade(id=5, symbol="BTCUSDT", side="LONG", status="pending")
    with pytest.raises(TradelabError, match="pending -> closed refused"):
        trades.transition(t, trades.CLOSED, clock, trades.MANUAL)
    trades.transition(t, trades.CANCELLED, clock, trades.NEVER_SENT)
    for to in (trades.OPEN, trades.CLOSED, trades.PENDING):
        with pytest.raises(TradelabError, match="allowed from cancelled: nothing"):
            trades.transition(t, to, clock, trades.MANUAL)
    assert t.status == trades.CANCELLED and t.close_reason == trades.NEVER_SENT


def test_the_database_refuses_a_status_outside_the_state_machine(engine):
    with pytest.raises(sa.exc.IntegrityError):
        with Session(engine) as s, s.begin():
            s.add(Trade(venue="sim", symbol="BTCUSDT", side="LONG", status="half-open"))


def test_a_pending_trade_left_by_old_code_without_an_order_is_cancelled_as_never_sent(sqlite_engine):
    clock = ManualClock("2024-06-03T00:00:00Z")
    port = synthetic_port(clock)
    with Session(sqlite_engine) as s, s.begin():
        s.add(Trade(venue="backtest", symbol="BTCUSDT", side="LONG", status="pending", qty=D("0.01"),
                    created_at=clock.now()))
    run_cycle(sqlite_engine, port, Settings.model_validate({"trading": {"symbols": "SOLUSDT", "timeframes": "60"}}),
              clock=clock)
    with Session(sqlite_engine) as s:
        t = s.scalars(sa.select(Trade).where(Trade.symbol == "BTCUSDT")).one()
    assert (t.status, t.close_reason) == (trades.CANCELLED, trades.NEVER_SENT)


def test_a_liquidation_is_recorded_as_liquidation(sim, sqlite_engine):
    from tradelab.exchange import OrderRequest
    from tradelab.orders import intent, send_intent
    port, clock = _sim_port(sim), ManualClock("2024-06-03T00:00:00Z")
    sim.set_price("SOLUSDT", "150")
    port.set_leverage("SOLUSDT", 50)
    # the cycle's own way: trade and intent together
    with Session(sqlite_engine, expire_on_commit=False) as s, s.begin():
        t = Trade(venue="sim", symbol="SOLUSDT", side="LONG", status="pending", qty=D("10"), created_at=clock.now())
        s.add(t); s.flush()
        req = OrderRequest("SOLUSDT", "Buy", D("10"), order_link_id="tl-liq-entry")
        s.add(intent(req, "sim", "entry", clock, trade_id=t.id))
    assert send_intent(sqlite_engine, port, "tl-liq-entry", clock, doubtful=False).status == "accepted"
    assert _sync(sqlite_engine, port, clock)["opened"] == 1
    sim.set_price("SOLUSDT", "140")  # 50x leverage: the margin is gone, the exchange closes the position
    assert _sync(sqlite_engine, port, clock)["closed"] == 1
    t = _closed(sqlite_engine, t.id)
    assert t.close_reason == trades.LIQUIDATION and t.pnl < 0


# --- an intent in flight when the process died: in doubt for the receive window, then settled -----------------------

class _Died(BaseException):
    "The process dies: nothing in tradelab catches it."


class _DiesWhileSending:
    "The venue, except that the process dies with the order request on its way (it never reaches the exchange yet)."
    def __init__(self, port): self._port = port
    def __getattr__(self, name): return getattr(self._port, name)
    def place_order(self, req): raise _Died(req.order_link_id)


def _in_flight(engine, port, clock, link):
    "A pending trade and its entry intent, sent by the cycle's own path until the process died mid-request."
    from tradelab.exchange import OrderRequest
    from tradelab.orders import intent, send_intent
    with Session(engine, expire_on_commit=False) as s, s.begin():
        t = Trade(venue="sim", symbol="ETHUSDT", side="LONG", status="pending", qty=D("0.1"), created_at=clock.now())
        s.add(t); s.flush()
        req = OrderRequest("ETHUSDT", "Buy", D("0.1"), order_link_id=link)
        s.add(intent(req, "sim", "entry", clock, trade_id=t.id))
    with pytest.raises(_Died): send_intent(engine, _DiesWhileSending(port), link, clock, doubtful=False)
    return t


def _order(engine, link) -> Order:
    with Session(engine) as s: return s.scalars(sa.select(Order).where(Order.client_order_id == link)).one()


def _trade(engine, trade_id) -> Trade:
    with Session(engine) as s: return s.get(Trade, trade_id)


def test_an_intent_in_flight_is_left_in_doubt_within_the_receive_window_then_marked_never_sent(sim, engine):
    from tradelab.orders import IN_DOUBT_GRACE
    port, clock, link = _sim_port(sim), ManualClock("2024-06-03T00:00:00Z"), "tl-late-1-entry"
    sim.set_price("ETHUSDT", "3000")
    t = _in_flight(engine, port, clock, link)
    assert _order(engine, link).status == "sending"
    clock.advance(2)  # the restart, 2 s later: the request may still be accepted
    assert reconcile(engine, port, "sim", clock)["in_doubt"] == 1
    assert trades.sync_trades(engine, port, "sim", clock) == {"opened": 0, "closed": 0, "cancelled": 0}
    o = _order(engine, link)
    assert (o.status, o.flags) == ("sending", None) and _trade(engine, t.id).status == trades.PENDING
    clock.advance(IN_DOUBT_GRACE.total_seconds())  # past the grace, and the exchange still does not know it
    out = reconcile(engine, port, "sim", clock)
    assert (out["in_doubt"], out["never_reached"]) == (0, 1)
    assert trades.sync_trades(engine, port, "sim", clock)["cancelled"] == 1
    o, t = _order(engine, link), _trade(engine, t.id)
    assert (o.status, o.flags) == ("rejected", "never_sent")
    assert (t.status, t.close_reason) == (trades.CANCELLED, trades.NEVER_SENT)
    assert not sim.call(lambda: link in sim.engine.by_link)  # reconciliation never resends


def test_an_intent_the_exchange_accepted_late_is_recorded_filled_and_its_trade_opens(sim, engine):
    from tradelab.orders import IN_DOUBT_GRACE, request_of
    port, clock, link = _sim_port(sim), ManualClock("2024-06-03T00:00:00Z"), "tl-late-2-entry"
    sim.set_price("ETHUSDT", "3000")
    t = _in_flight(engine, port, clock, link)
    clock.advance(2)
    assert reconcile(engine, port, "sim", clock)["in_doubt"] == 1
    port.place_order(request_of(_order(engine, link)))  # the request that was on its way arrives and is accepted
    clock.advance(IN_DOUBT_GRACE.total_seconds())
    assert reconcile(engine, port, "sim", clock)["settled"] == 1
    assert trades.sync_trades(engine, port, "sim", clock)["opened"] == 1
    o, t = _order(engine, link), _trade(engine, t.id)
    assert o.status == "filled" and o.exchange_order_id == sim.call(lambda: sim.engine.by_link[link])
    assert t.status == trades.OPEN and t.entry_price == o.avg_price > 0 and t.qty == D("0.1")
