"""The SQL path and the DuckDB path of the statistics give the same numbers on both databases."""
import datetime as dt
import random
from functools import partial

from sqlalchemy.orm import Session

import pytest

from tradelab.analytics import DEFAULT_VENUES, calibration, compare_prompts, performance, prompt_stats
from tradelab.core import D, TradelabError, UTC
from tradelab.db import Analysis, Trade

ALL = ["backtest", "legacy", "live", "paper", "sim"]


def _seed(engine, n=300, seed=7):
    rng = random.Random(seed)
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    with Session(engine) as s:
        for i in range(n):
            pv = rng.choice(["plain@1", "confluence@1", "technical@1", "v1-unknown"])
            venue = rng.choice(ALL)
            a = Analysis(symbol=rng.choice(["BTCUSDT", "ETHUSDT"]), timeframe="60", prompt_version=pv, venue=venue,
                         recommendation=rng.choice(["LONG", "SHORT", "HOLD"]),
                         confidence=D(str(round(rng.uniform(0.3, 0.95), 4))) if rng.random() > 0.1 else None)
            s.add(a)
            s.flush()
            if rng.random() < 0.5:
                status = rng.choice(["closed", "closed", "closed", "open", "cancelled", "pending"])
                pnl = D(str(round(rng.uniform(-50, 80), 6))) if status == "closed" and rng.random() > 0.05 else None
                s.add(Trade(analysis_id=a.id, venue=venue, symbol=a.symbol, side="LONG", status=status, pnl=pnl,
                            prompt_version=pv,
                            closed_at=t0 + dt.timedelta(hours=i) if status == "closed" else None))
        s.commit()


@pytest.mark.parametrize("venues", [None, ALL, ["sim"]], ids=["real-money", "all", "sim"])
def test_duckdb_and_sql_paths_agree_on_performance(engine, venues):
    _seed(engine)
    sql, duck = performance(engine, venues), performance(engine, venues, using="duckdb")
    assert sql == duck
    assert sql["closed_trades"] > 10 and sql["win_rate"] == sql["wins"] / sql["closed_trades"]


@pytest.mark.parametrize("venues", [None, ALL], ids=["real-money", "all"])
def test_duckdb_and_sql_paths_agree_on_prompt_statistics(engine, venues):
    _seed(engine)
    sql, duck = prompt_stats(engine, venues), prompt_stats(engine, venues, using="duckdb")
    assert [r["prompt_version"] for r in sql] == sorted({"plain@1", "confluence@1", "technical@1", "v1-unknown"})
    for a, b in zip(sql, duck):
        assert a.keys() == b.keys()
        for k in a:
            if k == "avg_confidence":
                assert abs(a[k] - b[k]) < 1e-9
            else:
                assert a[k] == b[k], k
        lo, hi = a["win_rate_ci95"]
        assert lo <= a["win_rate"] <= hi


def test_a_win_is_a_closed_trade_with_positive_pnl(engine):
    with Session(engine) as s:
        for st, p in [("closed", "1"), ("closed", "0"), ("closed", "-1"), ("open", "5"), ("closed", None)]:
            s.add(Trade(symbol="BTCUSDT", side="LONG", status=st, venue="live", pnl=None if p is None else D(p)))
        s.commit()
    r = performance(engine)
    assert (r["closed_trades"], r["wins"], r["losses"], r["open_trades"]) == (4, 1, 1, 1)
    assert r["win_rate"] == 0.25


def test_calibration_and_paired_comparison_after_migrating_the_legacy_history(engine, tmp_path):
    from tradelab.analytics import calibration, compare_prompts
    from tradelab.legacy import migrate_legacy
    from tradelab.legacy_fixture import make_legacy_db
    make_legacy_db(tmp_path / "old.db", 2000, 400, seed=5)
    migrate_legacy(engine, tmp_path / "old.db")
    cal = calibration(engine)
    assert sum(b["n"] for b in cal) > 0 and all(b["hit_rate"] is None or 0 <= b["hit_rate"] <= 1 for b in cal)
    cmp_ = compare_prompts(engine, "v1", "v2-confluence")
    assert cmp_["charts_both"] > 0 and 0 <= cmp_["agreement"] <= 1 and 0 <= cmp_["mcnemar_p"] <= 1


# --- statistics keep the real-money record apart (issue 9, item 5) ---

def _one_trade_per_venue(engine):
    """Per venue: one analysis and closed trades whose pnl tells the venue apart."""
    pnl = {"legacy": "10", "live": "1", "sim": "-1000", "paper": "300", "backtest": "50000"}
    with Session(engine) as s:
        for v, p in pnl.items():
            a = Analysis(symbol="BTCUSDT", timeframe="60", prompt_version="p@1", venue=v, confidence=D("0.7"),
                         recommendation="LONG", image_sha256="cd" * 32)
            s.add(a)
            s.flush()
            s.add(Trade(analysis_id=a.id, venue=v, symbol="BTCUSDT", side="LONG", status="closed", pnl=D(p),
                        prompt_version="p@1"))
            s.add(Trade(venue=v, symbol="BTCUSDT", side="LONG", status="open", prompt_version="p@1"))
        s.commit()


@pytest.mark.parametrize("using", ["sql", "duckdb"])
def test_performance_counts_only_the_real_money_record_by_default(engine, using):
    f = partial(performance, using=using)
    _one_trade_per_venue(engine)
    r = f(engine)
    assert r["venues"] == ["legacy", "live"] == sorted(DEFAULT_VENUES)
    assert (r["analyses"], r["closed_trades"], r["open_trades"], r["total_pnl"], r["wins"]) == (2, 2, 2, 11.0, 2)
    sim = f(engine, venues=["sim"])
    assert (sim["venues"], sim["analyses"], sim["closed_trades"], sim["total_pnl"]) == (["sim"], 1, 1, -1000.0)
    both = f(engine, venues=("paper", "backtest"))
    assert both["venues"] == ["backtest", "paper"] and both["total_pnl"] == 50300.0


@pytest.mark.parametrize("using", ["sql", "duckdb"])
def test_prompt_statistics_say_which_venues_they_cover(engine, using):
    f = partial(prompt_stats, using=using)
    _one_trade_per_venue(engine)
    [row] = f(engine)
    assert (row["analyses"], row["closed_trades"], row["total_pnl"], row["venues"]) == (2, 2, 11.0, ["legacy", "live"])
    [row] = f(engine, venues=["paper"])
    assert (row["analyses"], row["closed_trades"], row["total_pnl"], row["venues"]) == (1, 1, 300.0, ["paper"])


def test_calibration_and_comparison_take_the_same_venues(engine):
    _one_trade_per_venue(engine)
    assert sum(b["n"] for b in calibration(engine)) == 2 and calibration(engine)[0]["venues"] == ["legacy", "live"]
    assert sum(b["hits"] for b in calibration(engine, venues=["sim"])) == 0
    assert sum(b["n"] for b in calibration(engine, venues=ALL)) == 5
    assert compare_prompts(engine, "p@1", "q@1")["venues"] == ["legacy", "live"]


def test_an_unknown_venue_is_refused_with_the_known_ones():
    with pytest.raises(TradelabError, match="'moon'.*legacy"):
        performance(None, venues=["moon"])
