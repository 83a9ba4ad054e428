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
    from tradelab.analytics import prompt_stats
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
