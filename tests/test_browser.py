"""The dashboard in a real browser: Debian's Chromium loads the served Panel app and shows the report's numbers."""
import os, socket, subprocess, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TRADELAB_CHROMIUM", "/usr/bin/chromium")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def served_app(tmp_path):
    """`panel serve apps/prompt_comparison.py` over a database holding a migrated legacy history."""
    from tradelab.analytics import prompt_stats
    from tradelab.db import make_engine
    from tradelab.legacy import migrate_legacy
    from tradelab.legacy_fixture import make_legacy_db
    from tradelab.migrate import upgrade
    url = f"sqlite:///{tmp_path / 'tradelab.db'}"
    eng = make_engine(url); upgrade(eng)
    make_legacy_db(tmp_path / "old.db", n_analyses=1200, n_trades=400, seed=5)
    migrate_legacy(eng, tmp_path / "old.db")
    stats = prompt_stats(eng); eng.dispose()
    port = _free_port()
    log = open(tmp_path / "panel.log", "w")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "panel"), "serve", str(ROOT / "apps" / "prompt_comparison.py"),
                             "--address", "127.0.0.1", "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"],
                            env={**os.environ, "DATABASE_URL": url}, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "panel.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError: time.sleep(0.5)
    else: pytest.fail("panel serve did not listen within 240 s:\n" + (tmp_path / "panel.log").read_text())
    yield f"http://127.0.0.1:{port}/prompt_comparison", stats
    proc.terminate(); proc.wait(30); log.close()


def test_the_served_prompt_comparison_page_lists_every_prompt_with_its_win_rate(served_app):
    from playwright.sync_api import sync_playwright
    url, stats = served_app
    assert Path(CHROMIUM).exists(), "Chromium is needed: `make test` installs Debian's chromium (tools/chromium.sh)"
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=180_000)
            page.wait_for_selector(".tabulator-row", timeout=180_000)
            rows = page.locator(".tabulator-row").all_inner_texts()
            page.screenshot(path=str(ROOT / ".cache" / "prompt_comparison.png"), full_page=True)
        finally: browser.close()
    assert errors == []
    assert len(rows) == len(stats)
    for r in stats:
        row = next(t for t in rows if t.split()[0] == r["prompt_version"])
        assert str(r["closed_trades"]) in row.split() and str(r["wins"]) in row.split()
