"""The dashboard in a real browser (Debian's Chromium through Playwright): log in, watch a tick move a position's
unrealised PnL, close it and find the trade in the history, a viewer without actions, a wrong TOTP code refused on
the live venue, every page drawn with no request leaving 127.0.0.1. Screenshots go to test-artifacts/."""
import os, time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pyotp
import pytest
from argon2 import PasswordHasher

from dashboard_desk import PASSWORD, Served, add_users, make_desk, open_position, stop_desk
from tradelab import auth, service
from tradelab.dashboard import NAV
from tradelab.server import routes

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("TRADELAB_CHROMIUM", "/usr/bin/chromium")
ROWS = ".tl-positions .tabulator-row"
DRAWN = "() => window.Bokeh && Bokeh.documents.length > 0 && [...Bokeh.index].every(v => v.has_finished())"


@pytest.fixture(scope="module", autouse=True)
def cheap_hashes():
    old, auth.HASHER = auth.HASHER, PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    yield
    auth.HASHER = old


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Chromium is needed: `make test` installs Debian's chromium (tools/chromium.sh)"
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context; afterwards, no request may have left 127.0.0.1 and no script may have failed."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg, seen, errors = ctx.new_page(), [], []
    pg.on("request", lambda r: seen.append(r.url)); pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()
    outside = [u for u in seen if urlparse(u).scheme not in ("blob", "data") and urlparse(u).hostname != "127.0.0.1"]
    assert outside == [] and errors == []


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    desk = make_desk(tmp_path_factory.mktemp("browser-dash"))
    add_users(desk)
    srv = Served(desk, routes(desk))
    yield srv
    srv.stop(); stop_desk(desk)


def _log_in(page, url, path, name, password=PASSWORD, shot=None):
    page.goto(url + path)
    page.wait_for_selector("input[name=username]")
    if shot: page.screenshot(path=str(SHOTS / shot))
    page.fill("input[name=username]", name); page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + path)


def _row(page, symbol):
    return page.locator(ROWS, has_text=symbol)


def _cell(page, symbol, field):
    return _row(page, symbol).locator(f'[tabulator-field="{field}"]').inner_text().strip()


def _until(fn, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn(): return
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout} s")


def test_a_trader_sees_a_tick_move_the_unrealised_pnl_then_closes_the_position_and_finds_the_trade(served, page):
    desk = served.desk
    tid = open_position(desk, "BTCUSDT", "Buy", "0.01", price="60000")
    _log_in(page, served.url, "/positions", "tia", shot="dashboard_login.png")
    _row(page, "BTCUSDT").wait_for()
    before = _cell(page, "BTCUSDT", "unrealised_pnl")
    entry = service.positions(desk.port)[0]["entry"]
    desk.sim.set_price("BTCUSDT", "61000")  # the streams see the new ticker and say "tick"; the page patches the row
    _until(lambda: _cell(page, "BTCUSDT", "mark") == "61,000.00", "the new mark shown")
    after = _cell(page, "BTCUSDT", "unrealised_pnl")
    expected = float((61000 - entry) * Decimal("0.01"))
    assert after != before and float(after.replace(",", "")) == pytest.approx(expected, abs=0.01)
    page.screenshot(path=str(SHOTS / "dashboard_positions_live.png"), full_page=True)
    _row(page, "BTCUSDT").locator("input[type=checkbox]").check()
    page.locator(".tl-close button").click()
    page.locator(".tl-confirm button").click()
    page.locator(".tl-message", has_text=f"trade {tid} closed").wait_for()
    page.locator(".tl-history .tabulator-row", has_text="manual").wait_for()
    assert _row(page, "BTCUSDT").count() == 0
    page.screenshot(path=str(SHOTS / "dashboard_positions_closed.png"), full_page=True)


def test_a_viewer_sees_positions_without_any_way_to_close_them(served, page):
    open_position(served.desk, "ETHUSDT", "Sell", "0.1", price="3000")
    _log_in(page, served.url, "/positions", "vic")
    _row(page, "ETHUSDT").wait_for()
    assert page.locator(".tl-close").count() == 0 and _row(page, "ETHUSDT").locator("input").count() == 0
    page.goto(served.url + "/desk"); page.locator(ROWS).first.wait_for()
    assert page.locator(".tl-halt").count() == 0
    page.screenshot(path=str(SHOTS / "dashboard_viewer_positions.png"), full_page=True)


def test_every_page_draws_for_an_admin_from_this_server_alone(served, page):
    _log_in(page, served.url, "/desk", "ann")
    for slug, _ in NAV:
        page.goto(f"{served.url}/{slug}")
        page.locator(f".tl-nav-{slug}").wait_for()
        page.wait_for_function(DRAWN)
        page.screenshot(path=str(SHOTS / f"dashboard_{slug}.png"), full_page=True)
        assert "This page failed" not in page.locator("body").inner_text(), slug


def test_on_the_live_venue_a_wrong_totp_code_is_refused_and_the_position_stays(tmp_path, page):
    desk = make_desk(tmp_path, venue="live", watcher=False)
    srv = Served(desk)
    try:
        add_users(desk, {"tia": "trader"})
        secret = auth.enroll_totp(desk.engine, "tia", desk.data_dir, "test", desk.clock)["secret"]
        open_position(desk, "BTCUSDT", "Buy", "0.01", price="60000")
        _log_in(page, srv.url, "/positions", "tia")
        _row(page, "BTCUSDT").locator("input[type=checkbox]").check()
        page.locator(".tl-close button").click()
        code = pyotp.TOTP(secret).now()
        page.locator(".tl-totp input").fill("000000" if code != "000000" else "111111")
        page.locator(".tl-confirm button").click()
        page.locator(".tl-message", has_text="TOTP refused: wrong TOTP code").wait_for()
        page.screenshot(path=str(SHOTS / "dashboard_live_totp_refused.png"), full_page=True)
        assert [p["symbol"] for p in service.positions(desk.port)] == ["BTCUSDT"]
    finally:
        srv.stop(); stop_desk(desk)
