"""The service layer every interface calls: status, positions, statistics by venue, actions, configuration."""
import ast, datetime as dt, subprocess, sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tradelab import service
from tradelab.core import D, ManualClock, TradelabError
from tradelab.db import Analysis, EquitySnapshot, Trade
from tradelab.exchange import OrderRequest
from tradelab.paper import synthetic_port
from tradelab.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
NOW = "2024-06-01T12:00:00Z"


@pytest.fixture
def clock():
    return ManualClock(NOW)


@pytest.fixture
def port(clock):
    return synthetic_port(clock, venue="paper")


def _snapshots(engine, venue, clock, *equities):
    "Equity snapshots taken yesterday, one minute apart, in this order."
    t0 = clock.now() - dt.timedelta(days=1)
    with Session(engine) as s, s.begin():
        s.add_all(EquitySnapshot(venue=venue, equity=D(e), at=t0 + dt.timedelta(minutes=i))
                  for i, e in enumerate(equities))


def _trade(s, venue, status, pnl=None, prompt="p@1", symbol="BTCUSDT", **kw):
    s.add(Trade(venue=venue, symbol=symbol, side="LONG", status=status, qty=D(1), pnl=None if pnl is None else D(pnl),
                prompt_version=prompt, created_at=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), **kw))


def test_status_measures_drawdown_from_the_true_peak_and_blocks_entries(engine, port, clock):
    _snapshots(engine, "paper", clock, 9500, 11500)  # the peak is 11,500, not the '9500' a text max would pick
    st = service.status(engine, port, Settings(), clock)
    assert st["venue"] == "paper" and st["equity"] == D(10000) and st["peak_equity"] == D(11500)
    assert f"{st['drawdown']:.2%}" == "13.04%"
    assert st["entries_allowed"] is False and [b.split(":")[0] for b in st["blocked_by"]] == ["max_drawdown"]
    assert st["halted"] is False and st["open_trades"] == 0 and st["pending_trades"] == 0 and st["open_positions"] == []


def test_status_allows_entries_on_a_healthy_account_and_counts_our_trades(engine, port, clock):
    _snapshots(engine, "paper", clock, 9800, 10100)
    with Session(engine) as s, s.begin():
        _trade(s, "paper", "pending"); _trade(s, "paper", "open", symbol="ETHUSDT"); _trade(s, "live", "open")
    st = service.status(engine, port, Settings(), clock)
    assert st["entries_allowed"] is True and st["blocked_by"] == []
    assert (st["open_trades"], st["pending_trades"]) == (1, 1)


def test_a_position_shows_its_mark_unrealised_pnl_levels_and_the_trade_it_belongs_to(engine, port, clock):
    port.place_order(OrderRequest("BTCUSDT", "Sell", D("0.01"), "Market", order_link_id="t-short-1"))
    with Session(engine) as s, s.begin(): _trade(s, "paper", "open")
    with Session(engine) as s: tid = s.query(Trade.id).scalar()
    (p,) = service.positions(port, engine)
    assert (p["symbol"], p["side"], p["size"], p["trade_id"]) == ("BTCUSDT", "SHORT", D("0.01"), tid)
    assert p["mark"] == port.ticker("BTCUSDT").last and p["unrealised_pnl"] == (p["entry"] - p["mark"]) * D("0.01")
    assert p["take_profit"] is None and p["stop_loss"] is None


def test_halt_blocks_entries_everywhere_and_resume_lifts_it(engine, port, clock):
    h = service.halt(engine, "alice", "news", clock)
    assert h["halted"] and h["by"] == "alice" and h["closed"] == []
    assert service.status(engine, port, Settings(), clock)["blocked_by"] == ["kill_switch: trading is halted"]
    assert not service.resume(engine, "alice", "", clock)["halted"]
    assert service.status(engine, port, Settings(), clock)["entries_allowed"]


def test_halt_with_close_all_closes_every_position_with_the_kill_switch_reason(engine, port, clock):
    for sym, side in (("BTCUSDT", "Buy"), ("ETHUSDT", "Sell")):
        qty = D("0.01") if sym == "BTCUSDT" else D("0.1")
        port.place_order(OrderRequest(sym, side, qty, "Market", order_link_id=f"t-{sym}"))
    with pytest.raises(TradelabError, match="exchange port"):
        service.halt(engine, "alice", "flash crash", clock, close_all=True)
    h = service.halt(engine, "alice", "flash crash", clock, port=port, close_all=True)
    assert sorted(c["symbol"] for c in h["closed"]) == ["BTCUSDT", "ETHUSDT"] and port.positions() == []
    assert service.status(engine, port, Settings(), clock)["halted"] is True


def test_close_position_and_modify_tpsl_go_through_the_trade_lifecycle(engine, port, clock):
    port.place_order(OrderRequest("BTCUSDT", "Buy", D("0.01"), "Market", order_link_id="t-long-1"))
    mark = port.ticker("BTCUSDT").last
    with pytest.raises(TradelabError, match="stop loss"):
        service.modify_tpsl(engine, port, "paper", "BTCUSDT", clock, stop_loss=round(mark * D("1.1")))
    service.modify_tpsl(engine, port, "paper", "BTCUSDT", clock, take_profit=round(mark * D("1.1")),
                        stop_loss=round(mark * D("0.9")))
    assert service.positions(port)[0]["stop_loss"] == round(mark * D("0.9"))
    assert service.close_position(engine, port, "paper", "BTCUSDT", clock)["symbol"] == "BTCUSDT"
    assert service.positions(port) == [] and service.close_all(engine, port, "paper", clock) == []


def test_statistics_count_the_real_money_record_unless_other_venues_are_asked_for(engine):
    with Session(engine) as s, s.begin():
        for venue, pnl in (("legacy", "10"), ("live", "-4"), ("paper", "100"), ("backtest", "7")):
            _trade(s, venue, "closed", pnl)
    perf = service.performance(engine)
    assert perf["closed_trades"] == 2 and perf["total_pnl"] == 6 and sorted(perf["venues"]) == ["legacy", "live"]
    assert service.performance(engine, venues="paper")["total_pnl"] == 100
    assert service.performance(engine, venues=["paper", "backtest"], duckdb=True)["closed_trades"] == 2
    (row,) = service.prompt_stats(engine, venues=["paper"])
    assert row["closed_trades"] == 1 and row["total_pnl"] == 100
    assert service.prompt_stats(engine)[0]["closed_trades"] == 2


def test_trades_and_analyses_are_listed_newest_first_by_venue_and_status(engine):
    with Session(engine) as s, s.begin():
        _trade(s, "paper", "closed", "1"); _trade(s, "live", "open"); _trade(s, "paper", "open")
        s.add_all([Analysis(symbol="BTCUSDT", timeframe="60", source="paper", venue="paper", status="accepted",
                            recommendation="LONG"),
                   Analysis(symbol="ETHUSDT", timeframe="60", source="live", venue="live", status="rejected",
                            reject_reason="x")])
    newest_first = [("paper", "open"), ("live", "open"), ("paper", "closed")]
    assert [(t["venue"], t["status"]) for t in service.trades(engine)] == newest_first
    assert [t["pnl"] for t in service.trades(engine, venue="paper", status="closed")] == [D(1)]
    assert len(service.trades(engine, limit=1)) == 1 and len(service.trades(engine, status=["open", "pending"])) == 2
    assert [a["symbol"] for a in service.analyses(engine, venue="live")] == ["ETHUSDT"]
    assert [a["symbol"] for a in service.analyses(engine, status="accepted")] == ["BTCUSDT"]


def test_a_setting_is_validated_before_it_is_stored_and_then_shows_in_the_effective_settings(engine, tmp_path, clock):
    ini = tmp_path / "settings.ini"
    ini.write_text("[risk]\nmax_slots = 4\n")
    assert service.config_get(engine, ini)["settings"]["risk"]["max_slots"] == 4
    with pytest.raises(TradelabError, match="max_slots"):
        service.config_set(engine, "risk.max_slots", "many", "bob", ini, clock)
    assert service.config_get(engine, ini)["overrides"] == {}
    assert service.config_set(engine, "risk.max_slots", "3", "bob", ini, clock)["effective"] == 3
    assert service.config_get(engine, ini)["settings"]["risk"]["max_slots"] == 3
    bad = service.config_validate(engine, ini, {"trading": {"venue": "moon"}})
    assert bad["valid"] is False and "venue" in bad["error"] and service.config_validate(engine, ini)["valid"]


def _imports(path: Path) -> set[str]:
    "tradelab modules a module imports, at any depth of its code (lazy imports count)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tradelab."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "tradelab":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tradelab.")}
    return out


def test_the_kill_switch_does_not_reach_the_cycle_through_any_import():
    graph = {p.stem: _imports(p) for p in (ROOT / "tradelab").glob("*.py")}
    seen, todo = set(), ["killswitch"]
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m); todo += [x for x in graph.get(m, ()) if x in graph]
    assert "cycle" not in seen and "cli" not in seen
    code = "import sys, tradelab.killswitch; assert 'tradelab.cycle' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_no_two_tradelab_modules_import_each_other_even_lazily():
    graph = {p.stem: _imports(p) for p in (ROOT / "tradelab").glob("*.py")}
    graph = {m: {x for x in deps if x in graph and x != m} for m, deps in graph.items()}
    def reach(m):
        seen, todo = set(), list(graph[m])
        while todo:
            x = todo.pop()
            if x not in seen: seen.add(x); todo += graph[x]
        return seen
    assert sorted(m for m in graph if m in reach(m)) == []


def test_the_service_layer_never_prints():
    tree = ast.parse((ROOT / "tradelab" / "service.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
