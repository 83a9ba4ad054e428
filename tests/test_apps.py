"""Panel apps show the same numbers as the reports."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "apps" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_the_prompt_comparison_page_shows_the_report_numbers(sqlite_engine, tmp_path):
    import panel as pn
    from tradelab.service import prompt_stats
    from tradelab.legacy import migrate_legacy
    from tradelab.legacy_fixture import make_legacy_db
    make_legacy_db(tmp_path / "old.db", n_analyses=1200, n_trades=400, seed=3)
    migrate_legacy(sqlite_engine, tmp_path / "old.db")
    app = _load("prompt_comparison")
    page = app.build(sqlite_engine)
    tables = [o for o in page.select(pn.widgets.Tabulator)]
    assert len(tables) == 1
    shown = tables[0].value.set_index("prompt_version")["win_rate"].to_dict()
    assert shown == {r["prompt_version"]: r["win_rate"] for r in prompt_stats(sqlite_engine)}


def test_the_prompt_comparison_page_on_an_empty_database_says_what_to_do(sqlite_engine):
    import panel as pn
    page = _load("prompt_comparison").build(sqlite_engine)
    assert "migrate-legacy" in " ".join(str(o.object) for o in page.select(pn.pane.Markdown))


def test_the_prompt_comparison_page_counts_only_the_venues_it_names(sqlite_engine):
    import panel as pn
    from sqlalchemy.orm import Session
    from tradelab.core import D
    from tradelab.db import Trade
    with Session(sqlite_engine) as s, s.begin():
        s.add_all([Trade(venue=v, symbol="BTCUSDT", side="LONG", status="closed", qty=D(1), pnl=D(p),
                         prompt_version="p@1") for v, p in (("live", "5"), ("paper", "-50"), ("paper", "-20"))])
    app = _load("prompt_comparison")
    def shown(page):
        (table,) = page.select(pn.widgets.Tabulator)
        text = " ".join(str(o.object) for o in page.select(pn.pane.Markdown))
        return table.value.set_index("prompt_version")["closed_trades"].to_dict(), text
    rows, text = shown(app.build(sqlite_engine))
    assert rows == {"p@1": 1} and "legacy, live" in text
    rows, text = shown(app.build(sqlite_engine, venues=["paper"]))
    assert rows == {"p@1": 2} and "**paper**" in text
