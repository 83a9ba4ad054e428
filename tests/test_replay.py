"""Prompt replay: past charts as they looked then, stored for the backtest, paid calls only when confirmed."""
import datetime as dt
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.backtest import run_backtest
from tradelab.candle_cache import CandleCache, synthetic_fetch
from tradelab.candles import synthetic_candles
from tradelab.charts import render_chart
from tradelab.core import TradelabError
from tradelab.db import Analysis
from tradelab.prompts import get_prompt
from tradelab.replay import chart_at, points, replay
from tradelab.settings import Settings
from tradelab.technical import TechnicalAnalyzer


@pytest.fixture(autouse=True)
def _prompts(monkeypatch, request):
    monkeypatch.setenv("TRADELAB_PROMPTS_DIR", str(request.config.rootpath / "prompts"))


def honest(s, iv, a, b): return synthetic_candles(s, iv, a, b)


def test_a_future_candle_cannot_leak_into_the_chart_or_the_prompt():
    at = "2024-06-05T10:20:00Z"
    def leaky(s, iv, a, b):  # a source that also hands over candles from after `at`, wildly different
        c = synthetic_candles(s, iv, a, b + (b - a))
        future = c.index >= c.index[0] + (b - a)
        c.loc[future, ["open", "high", "low", "close"]] *= 10
        return c
    clean, dirty = chart_at(honest, "BTCUSDT", "60", at, 120), chart_at(leaky, "BTCUSDT", "60", at, 120)
    assert clean["candles"].equals(dirty["candles"])
    assert clean["candles"].index[-1].isoformat() == "2024-06-05T09:00:00+00:00"  # the 10:00 candle was still running
    assert render_chart(clean["candles"], "BTCUSDT", "60") == render_chart(dirty["candles"], "BTCUSDT", "60")


def test_anonymised_charts_hide_symbol_dates_and_price_level():
    ch = chart_at(honest, "SOLUSDT", "240", "2024-07-01", 100, anonymise=True)
    c = ch["candles"]
    assert ch["symbol"] == "ASSET" and c.index[0].year == 2000 and abs(c["close"].iloc[-1] - 100) < 1e-9


def test_replayed_answers_are_dated_in_the_past_on_real_prices_and_scored_by_the_backtest(sqlite_engine, tmp_path):
    at = points("2024-06-01", "2024-06-03", "8h")
    res = replay(sqlite_engine, TechnicalAnalyzer(), get_prompt("technical@1"), honest, ["ETHUSDT", "BTCUSDT"], "60",
                 at, Settings(), anonymise=True)
    assert res["calls"] == len(at) * 2 == len(res["ids"])
    with Session(sqlite_engine) as s:
        rows = s.scalars(sa.select(Analysis).where(Analysis.id.in_(res["ids"]))).all()
    assert {r.symbol for r in rows} == {"ETHUSDT", "BTCUSDT"} and all(r.source == r.venue == "backtest" for r in rows)
    assert sorted({r.created_at for r in rows}) == at
    for r in rows:
        if r.status == "accepted" and r.recommendation != "HOLD":  # unscaled back to the real market
            before = synthetic_candles(r.symbol, "60", r.created_at - dt.timedelta(hours=6), r.created_at)
            real = before["close"].iloc[-1]
            assert abs(float(r.entry_price) / real - 1) < 0.05
    out = run_backtest(sqlite_engine, CandleCache(tmp_path / "c", synthetic_fetch()), "replay", "15", 96)
    assert out["analyses"] == sum(r.status == "accepted" and r.recommendation != "HOLD" for r in rows)


class PaidAnalyzer:
    "Stands in for a billed model: counts calls (the gate before it is under test, not the model)."
    model, paid, calls = "gpt-4o", True, 0
    def ask(self, *a):
        PaidAnalyzer.calls += 1
        raise AssertionError("no call may be made without confirmation")


def test_a_paid_model_is_not_called_until_the_estimated_cost_is_confirmed(sqlite_engine):
    at = points("2024-06-01", "2024-06-02", "6h")
    seen = []
    with pytest.raises(TradelabError, match=r"10 paid calls, about \$0\.0[0-9]"):
        replay(sqlite_engine, PaidAnalyzer(), get_prompt("chart_read@1"), honest, ["BTCUSDT", "ETHUSDT"], "60", at,
               Settings(), confirm=lambda n, usd: seen.append((n, usd)) or False)
    assert PaidAnalyzer.calls == 0 and seen[0][0] == 10 and seen[0][1] > 0
