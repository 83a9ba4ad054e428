"""Dashboard pages built headless over a real SQLite store: what each role sees, what each action does or refuses."""
import datetime as dt
import shutil

import panel as pn
import pyotp
import pytest
from bokeh.models import Label, Span
from sqlalchemy.orm import Session

from tradelab import auth, pages, service
from tradelab.config_store import effective_settings
from tradelab.core import D, ManualClock
from tradelab.db import Analysis, EquitySnapshot, PipelineRun, Trade
from tradelab.desk import Desk
from tradelab.live import PageContext
from tradelab.paper import synthetic_port
from tradelab.settings import Env

ROLES = ("viewer", "trader", "admin")
PASSWORD = "a long pass phrase"


def _notebook(path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Daily report"), nbformat.v4.new_code_cell(
        "print(equity)", outputs=[nbformat.v4.new_output("stream", text="equity today 10008 USDT\n")])])
    nbformat.write(nb, path)


def _fill(engine, clock, tmp_path):
    at = lambda h: clock.now() - dt.timedelta(hours=h)
    with Session(engine) as s, s.begin():
        for i, (venue, pv, pnl) in enumerate([("paper", "a@1", "12.5"), ("paper", "a@1", "-4"), ("paper", "b@1", "7"),
                                              ("live", "a@1", "-100")]):
            an = Analysis(symbol="BTCUSDT", timeframe="60", venue=venue, prompt_version=pv, status="accepted",
                          recommendation="LONG", confidence=D("0.7"), entry_price=D(60000), stop_loss=D(59000),
                          take_profit=D(62000), reasoning="higher lows", model="technical", cost_usd=D("0.01"),
                          latency_ms=40, created_at=at(30 - i))
            s.add(an); s.flush()
            s.add(Trade(venue=venue, symbol="BTCUSDT", side="LONG", status="closed", qty=D("0.01"), pnl=D(pnl),
                        prompt_version=pv, analysis_id=an.id, closed_at=at(20 - i)))
        s.add(Analysis(symbol="ETHUSDT", timeframe="240", venue="paper", prompt_version="a@1", status="rejected",
                       reject_reason="stop loss above entry for a LONG", recommendation="LONG", created_at=at(2)))
        s.add_all([EquitySnapshot(venue="paper", equity=D(e), at=at(h)) for e, h in ((10000, 30), (10008, 10))])
        s.add(PipelineRun(pipeline="daily_report", status="ok", started_at=at(1), duration_ms=1200,
                          output_path=str(tmp_path / "run.ipynb")))
    _notebook(tmp_path / "run.ipynb")


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    """One migrated SQLite file for the module; each test gets a copy (migrating takes longer than the test)."""
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    path = tmp_path_factory.mktemp("template") / "tradelab.db"
    eng = make_engine(f"sqlite:///{path}"); upgrade(eng); eng.dispose()
    return path


@pytest.fixture
def sqlite_engine(migrated, tmp_path):
    """A migrated SQLite database of this test's own (a copy of the module's template)."""
    from tradelab.db import make_engine
    shutil.copy(migrated, tmp_path / "tradelab.db")
    eng = make_engine(f"sqlite:///{tmp_path / 'tradelab.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def ctx(sqlite_engine, data_dir, tmp_path):
    """`ctx(role)`: a page context on a desk over a store with a few analyses, trades, equity snapshots and a run."""
    clock = ManualClock("2024-06-01T12:00:00Z")
    ini = tmp_path / "settings.ini"; ini.write_text("[trading]\nvenue = paper\n")
    desk = Desk(sqlite_engine, lambda: effective_settings(sqlite_engine, ini), Env(_env_file=None), clock)
    desk.port, desk.settings_path = synthetic_port(clock, venue="paper"), ini
    _fill(sqlite_engine, clock, tmp_path)
    return lambda role: PageContext(desk, {"name": f"{role}1", "role": role})


@pytest.fixture
def users(ctx):
    """viewer1, trader1 and admin1 as users in the store (argon2 hashing is slow on purpose: only where needed)."""
    desk = ctx("admin").desk
    for role in ROLES: auth.add_user(desk.engine, f"{role}1", PASSWORD, role, "setup", desk.clock)


def _buttons(page):
    return {b.label for b in page.select(pn.widgets.Button)}


def _markdown(page):
    return " ".join(str(o.object) for o in page.select(pn.pane.Markdown))


def test_every_page_builds_for_every_role_and_renders(ctx):
    for name, page in pages.PAGES.items():
        for role in ROLES:
            layout = page(ctx(role))
            assert isinstance(layout, pn.Column), (name, role)
        layout.get_root()  # the admin's page becomes Bokeh models (plots included) without an error


def test_a_viewer_gets_no_save_analyse_or_user_buttons(ctx):
    seen = set().union(*(_buttons(page(ctx("viewer"))) for page in pages.PAGES.values()))
    assert not seen & {"Analyse now", "Save", "Check changes", "Add user", "Disable", "New API key"}
    assert "Analyse now" in _buttons(pages.analyses_page(ctx("trader")))
    assert "Save" not in _buttons(pages.config_page(ctx("trader")))
    users = pages.users_page(ctx("trader"))
    assert not _buttons(users) and "Only an admin" in _markdown(users)
    assert all(w.disabled for w in pages.config_page(ctx("viewer")).select(pn.widgets.TextInput))


def test_the_feed_shows_each_analysis_newest_first_with_its_levels_and_verdict(ctx):
    feed = pages.Feed(ctx("viewer"), page_size=2).show()
    assert feed.where.object == "page 1 of 3 · 5 analyses"
    first = feed.cards[0]
    assert first.title.startswith("#5 ETHUSDT") and "stop loss above entry" in _markdown(first)
    feed.older.clicks += 1
    card = feed.cards[0]
    text = _markdown(card)
    assert card.title.startswith("#3 BTCUSDT") and "accepted" in text and "prompt `b@1`" in text
    assert "cost $0.01 · 40 ms" in text
    (chart,) = card.select(pn.pane.Bokeh)
    labels = [x.text.split() for x in chart.object.center if isinstance(x, Label)]
    assert labels == [["entry", "60000"], ["SL", "59000"], ["TP", "62000"]]
    assert {s.location for s in chart.object.center if isinstance(s, Span)} == {60000, 59000, 62000}


def test_analyse_now_refuses_a_file_that_is_not_an_image_and_stores_nothing(ctx):
    c = ctx("trader")
    form = pages.AnalyseNow(c)
    form.upload.value, form.upload.filename = b"%PDF-1.7 not a chart", "chart.pdf"
    form.button.clicks += 1
    assert form.message.alert_type == "danger" and "chart.pdf: not a PNG, JPEG or WebP image" in form.message.object
    assert service.analysis_feed(c.desk.engine, limit=0)["total"] == 5
    refusal = service.audit_entries(c.desk.engine, 1)[0]
    assert (refusal["actor"], refusal["action"], refusal["target"]) == ("trader1", "analysis.request.refused",
                                                                        "chart.pdf")


def test_analyse_now_on_a_symbol_stores_the_analysis_and_shows_it_first_in_the_feed(ctx):
    page = pages.analyses_page(ctx("trader"))
    (form_card, feed_view) = page[1], page[2]
    form = next(w for w in form_card.select(pn.widgets.Select) if w.label == "prompt")
    form.value = "technical@1"
    next(b for b in page.select(pn.widgets.Button) if b.label == "Analyse now").clicks += 1
    (msg,) = [a for a in page.select(pn.pane.Alert) if a.visible]
    assert msg.alert_type == "success" and "Analysis #6 BTCUSDT" in msg.object
    assert feed_view.select(pn.Card)[0].title.startswith("#6 BTCUSDT")
    assert service.audit_entries(ctx("trader").desk.engine, 1)[0]["target"] == "analysis 6"


def test_an_uploaded_chart_is_read_by_the_vision_model_and_shown_as_it_was(ctx, sqlite_engine):
    from tradelab.charts import render_chart
    from tradelab.fakellm import start_fake_llm
    fake = start_fake_llm(("json", {"recommendation": "SHORT", "confidence": 0.8, "entry_price": 60000,
                                    "stop_loss": 61000, "take_profit": 57000, "reasoning": "lower highs"}))
    try:
        c = ctx("trader")
        c.desk.env = c.desk.env.model_copy(update={"openai_base_url": fake.base_url})
        form = pages.AnalyseNow(c)
        png = render_chart(service.moment_candles("BTCUSDT", "60", "2024-06-01T12:00:00Z", 60), "BTCUSDT", "60")
        form.upload.value, form.upload.filename, form.prompt.value = png, "btc.png", "chart_read@1"
        form.button.clicks += 1
    finally: fake.stop()
    assert form.message.alert_type == "success" and "SHORT" in form.message.object
    (a,) = service.analysis_feed(sqlite_engine, limit=1)["rows"]
    card = pages.analysis_card(c, a)
    assert a["recommendation"] == "SHORT" and a["image_path"] and len(card.select(pn.pane.PNG)) == 1


def test_a_config_edit_that_breaks_a_rule_is_refused_and_changes_nothing(ctx):
    c = ctx("admin")
    ed = pages.ConfigEditor(c)
    ed.inputs["risk.max_slots"].value = "0"
    ed.check.clicks += 1
    assert ed.message.alert_type == "danger" and "max_slots" in ed.message.object and ed.save.disabled
    ed.save.clicks += 1  # a disabled button clicked anyway saves nothing
    assert c.desk.settings().risk.max_slots == 5 and service.config_history(c.desk.engine) == []
    assert service.audit_entries(c.desk.engine, 1)[0]["action"] == "config.set.refused"


def test_a_good_config_edit_shows_its_diff_then_saves_with_history(ctx):
    c = ctx("admin")
    page = pages.config_page(c)
    inputs = {w.label: w for w in page.select(pn.widgets.TextInput)}
    inputs["max_slots"].value, inputs["symbols"].value = "3", "btcusdt, ethusdt"
    buttons = {b.label: b for b in page.select(pn.widgets.Button)}
    buttons["Check changes"].clicks += 1
    (diff,) = [d for d in page.select(pn.pane.DataFrame) if d.visible]
    assert diff.object.to_dict("records") == [
        {"key": "trading.symbols", "old": "BTCUSDT, ETHUSDT, SOLUSDT", "new": "BTCUSDT, ETHUSDT"},
        {"key": "risk.max_slots", "old": 5, "new": 3}]
    assert c.desk.settings().risk.max_slots == 5  # shown, not saved yet
    buttons["Save"].clicks += 1
    assert c.desk.settings().risk.max_slots == 3 and c.desk.settings().trading.symbols == ["BTCUSDT", "ETHUSDT"]
    history = page.select(pn.widgets.Tabulator)[0].value
    assert sorted(history["key"]) == ["risk.max_slots", "trading.symbols"] and set(history["by"]) == {"admin1"}


def test_enabling_the_live_venue_needs_the_admins_fresh_totp_code(ctx, users, data_dir):
    c = ctx("admin")
    secret = auth.enroll_totp(c.desk.engine, "admin1", data_dir, "setup", c.desk.clock)["secret"]
    ed = pages.ConfigEditor(c)
    ed.inputs["trading.venue"].value = "live"
    ed.check.clicks += 1
    assert ed.totp.visible
    ed.totp.value = "123456" if pyotp.TOTP(secret).at(c.desk.clock.now()) != "123456" else "654321"
    ed.save.clicks += 1
    assert "wrong TOTP code" in ed.message.object and c.desk.settings().trading.venue == "paper"
    ed.check.clicks += 1; ed.totp.value = pyotp.TOTP(secret).at(c.desk.clock.now()); ed.save.clicks += 1
    assert ed.message.object == "Saved: trading.venue." and c.desk.settings().trading.venue == "live"


def test_the_runs_page_renders_a_runs_executed_notebook_in_a_sandbox(ctx):
    page = pages.runs_page(ctx("viewer"))
    (runs,) = page.select(pn.widgets.Tabulator)
    assert runs.value[["pipeline", "status", "duration_ms"]].values.tolist() == [["daily_report", "ok", 1200]]
    runs.selection = [0]
    shown = page.select(pn.pane.HTML)[0].object
    assert shown.startswith('<iframe sandbox=""') and "equity today 10008 USDT" in shown and "cdnjs" not in shown


def test_performance_shows_one_venue_at_a_time(ctx):
    page = pages.performance_page(ctx("viewer"))
    table = lambda: page.select(pn.widgets.Tabulator)[0].value.set_index("prompt")
    assert table()["closed_trades"].to_dict() == {"a@1": 2, "b@1": 1} and table()["total_pnl"]["a@1"] == 8.5
    next(w for w in page.select(pn.widgets.Select) if w.label == "venue").value = "live"
    assert table()["closed_trades"].to_dict() == {"a@1": 1} and table()["total_pnl"]["a@1"] == -100


def test_the_prompts_page_shows_the_service_numbers_for_the_venues_picked(ctx):
    c = ctx("viewer")
    page = pages.prompts_page(c)
    page[0][0].value = ["paper"]
    (t,) = page.select(pn.widgets.Tabulator)
    expected = {r["prompt_version"]: r["win_rate"] for r in service.prompt_stats(c.desk.engine, venues=["paper"])}
    assert t.value.set_index("prompt_version")["win_rate"].to_dict() == expected
    assert t.value.set_index("prompt_version")["cost_per_trade"].to_dict() == {"a@1": 0.01, "b@1": 0.01}


def test_user_admin_actions_go_through_auth_and_refusals_are_shown_and_audited(ctx, users):
    c = ctx("admin")
    ua = pages.UsersAdmin(c)
    ua.name.value, ua.password.value, ua.role.value = "erin", "short", "trader"
    ua.buttons["Add user"].clicks += 1
    assert "at least 12 characters" in ua.message.object and [u["name"] for u in auth.list_users(c.desk.engine)] == [
        "admin1", "trader1", "viewer1"]
    ua.password.value = PASSWORD; ua.buttons["Add user"].clicks += 1
    ua.who.value = "erin"; ua.label.value = "grafana"; ua.buttons["New API key"].clicks += 1
    key = ua.message.object.split("`")[1]
    assert auth.check_api_key(c.desk.engine, key).name == "erin"
    ua.buttons["Disable"].clicks += 1
    assert auth.check_api_key(c.desk.engine, key) is None
    ua.who.value = "admin1"; ua.buttons["Disable"].clicks += 1
    assert ua.message.alert_type == "danger" and "last enabled admin" in ua.message.object
    assert service.audit_entries(c.desk.engine, 1, actor="admin1")[0]["action"] == "user.disable.refused"


def test_a_new_analysis_or_run_reaches_the_open_pages_through_the_live_store(ctx, sqlite_engine):
    from tradelab.events import Event
    from tradelab.live import LiveStore
    c = ctx("viewer")
    c.live = live = LiveStore()
    feed, runs = pages.analyses_page(c), pages.runs_page(c)
    assert live.watchers == 2
    d = c.desk
    service.analyze_request(sqlite_engine, d.env, d.settings(), d.clock, "desk", "technical@1", symbol="SOLUSDT",
                            timeframe="60")
    with Session(sqlite_engine) as s, s.begin(): s.add(PipelineRun(pipeline="trading_cycle", status="running"))
    live.take(Event("analysis.stored", {"id": 6})); live.take(Event("run.started", {"pipeline": "trading_cycle"}))
    assert feed.select(pn.Card)[0].title.startswith("#6 SOLUSDT")
    assert runs.select(pn.widgets.Tabulator)[0].value["pipeline"].tolist() == ["trading_cycle", "daily_report"]


def test_analyse_now_refuses_an_image_over_the_size_limit_and_escapes_the_file_name(ctx, sqlite_engine):
    from tradelab.charts import render_chart
    c = ctx("trader")
    service.config_set(sqlite_engine, "analysis.max_image_bytes", 2000, "setup", c.desk.settings_path, c.desk.clock)
    form = pages.AnalyseNow(c)
    png = render_chart(service.moment_candles("BTCUSDT", "60", "2024-06-01T12:00:00Z", 60), "BTCUSDT", "60")
    form.upload.value, form.upload.filename = png, "<img src=x onerror=alert(1)>.png"
    form.button.clicks += 1
    assert form.message.alert_type == "danger" and "over the 2,000-byte limit" in form.message.object
    assert "<img" not in form.message.object and "&lt;img" in form.message.object
    assert service.analysis_feed(sqlite_engine, limit=0)["total"] == 5
