"""In a real browser (Debian's Chromium): the served Panel app and a research notebook under Voila show the report's
numbers."""
import os, socket, subprocess, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TRADELAB_CHROMIUM", "/usr/bin/chromium")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _serve(cmd, log_path, env=None, cwd=None):
    """Start a server process and wait until it listens; returns (process, port)."""
    port = _free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([c.replace("{port}", str(port)) for c in cmd], env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, Path(log_path).read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); return proc, port
        except OSError: time.sleep(0.5)
    proc.kill(); pytest.fail(f"{cmd[0]} did not listen within 240 s:\n" + Path(log_path).read_text())


def _open(url, selector, shot):
    """Load `url` in Chromium, wait for `selector`; returns (page text, errors raised in the page)."""
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Chromium is needed: `make test` installs Debian's chromium (tools/chromium.sh)"
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=180_000)
            page.wait_for_selector(selector, timeout=240_000)
            rows = page.locator(selector).all_inner_texts()
            page.screenshot(path=str(ROOT / ".cache" / shot), full_page=True)
        finally: browser.close()
    return rows, errors


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
    proc, port = _serve([str(ROOT / ".venv" / "bin" / "panel"), "serve", str(ROOT / "apps" / "prompt_comparison.py"),
                         "--address", "127.0.0.1", "--port", "{port}", "--allow-websocket-origin", "127.0.0.1:{port}"],
                        tmp_path / "panel.log", env={"DATABASE_URL": url}, cwd=tmp_path)
    yield f"http://127.0.0.1:{port}/prompt_comparison", stats
    proc.terminate(); proc.wait(30)


def test_the_served_prompt_comparison_page_lists_every_prompt_with_its_win_rate(served_app):
    url, stats = served_app
    rows, errors = _open(url, ".tabulator-row", "prompt_comparison.png")
    assert errors == [] and len(rows) == len(stats)
    for r in stats:
        row = next(t for t in rows if t.split()[0] == r["prompt_version"])
        assert str(r["closed_trades"]) in row.split() and str(r["wins"]) in row.split()


def test_a_research_notebook_renders_as_a_voila_page(tmp_path):
    proc, port = _serve([str(ROOT / ".venv" / "bin" / "voila"), "--no-browser", "--port={port}", "--Voila.ip=127.0.0.1",
                         str(ROOT / "nbs" / "research" / "02_prompt_comparison.ipynb")],
                        tmp_path / "voila.log", cwd=tmp_path)
    try: tables, errors = _open(f"http://127.0.0.1:{port}/", "table", "voila_prompt_comparison.png")
    finally: proc.terminate(); proc.wait(30)
    assert errors == []
    assert all(v in tables[0] for v in ("v1-unknown", "v2-confluence", "v3-risk-first"))  # prompt statistics
    assert "charts_both" in tables[1] and "mcnemar_p" in tables[1]  # the paired comparison
