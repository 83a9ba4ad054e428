"""The SQL path and the DuckDB path of the statistics give the same numbers on both databases."""
import datetime as dt
import random

from sqlalchemy.orm import Session

from tradelab.analytics import duck_performance, duck_prompt_stats, performance, prompt_stats
from tradelab.core import D, UTC
from tradelab.db import Analysis, Trade


def _seed(engine, n=300, seed=7):
    rng = random.Random(seed)
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    with Session(engine) as s:
        for i in range(n):
            pv = rng.choice(["plain@1", "confluence@1", "technical@1", "v1-unknown"])
            a = Analysis(symbol=rng.choice(["BTCUSDT", "ETHUSDT"]), timeframe="60", prompt_version=pv,
                         recommendation=rng.choice(["LONG", "SHORT", "HOLD"]),
                         confidence=D(str(round(rng.uniform(0.3, 0.95), 4))) if rng.random() > 0.1 else None)
            s.add(a)
            s.flush()
            if rng.random() < 0.5:
                status = rng.choice(["closed", "closed", "closed", "open", "cancelled", "pending"])
                pnl = D(str(round(rng.uniform(-50, 80), 6))) if status == "closed" and rng.random() > 0.05 else None
                s.add(Trade(analysis_id=a.id, symbol=a.symbol, side="LONG", status=status, pnl=pnl, prompt_version=pv,
                            closed_at=t0 + dt.timedelta(hours=i) if status == "closed" else None))
        s.commit()


def test_duckdb_and_sql_paths_agree_on_performance(engine):
    _seed(engine)
    sql, duck = performance(engine), duck_performance(engine)
    assert sql == duck
    assert sql["closed_trades"] > 50 and sql["win_rate"] == sql["wins"] / sql["closed_trades"]


def test_duckdb_and_sql_paths_agree_on_prompt_statistics(engine):
    _seed(engine)
    sql, duck = prompt_stats(engine), duck_prompt_stats(engine)
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
            s.add(Trade(symbol="BTCUSDT", side="LONG", status=st, pnl=None if p is None else D(p)))
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
