"""`tradelab up` as a user runs it: one process, /health, scheduled runs, stopped cleanly by a signal."""
import json, os, signal, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from tradelab.auth import add_user, create_api_key

ROOT = Path(__file__).resolve().parents[1]
TL = str(Path(sys.executable).with_name("tradelab"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _health(port):
    """(HTTP status, body) of /health, or (None, None) while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r: return r.status, json.load(r)
    except urllib.error.HTTPError as e: return e.code, json.load(e)
    except OSError: return None, None


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()): return v
        time.sleep(0.3)
    pytest.fail(f"not within {timeout} s: {what}")


def _descendants(pid):
    """Every live process whose ancestry includes `pid` (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try: parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError): pass
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out: out.add(c); todo.append(c)
    return out


@pytest.fixture
def settings_1m(tmp_path):
    """The shipped settings with one symbol on 1-minute candles: a scheduled run is due at once."""
    text = (ROOT / "settings.ini").read_text()
    text = text.replace("symbols = BTCUSDT, ETHUSDT, SOLUSDT", "symbols = BTCUSDT").replace(
        "timeframes = 60, 240", "timeframes = 1")
    p = tmp_path / "settings.ini"; p.write_text(text); return p


def _up(tmp_path, data_dir, settings, *extra, env=None):
    port, sim = _free_port(), _free_port()
    subprocess.run([TL, "--settings", str(settings), "db", "upgrade"], check=True, cwd=ROOT, capture_output=True)
    log = open(tmp_path / "desk.log", "w")
    e = {k: v for k, v in os.environ.items() if k not in ("BYBIT_BASE_URL", "REDIS_URL", "TELEGRAM_BOT_TOKEN")}
    proc = subprocess.Popen([TL, "--settings", str(settings), "up", "--port", str(port), "--sim-port", str(sim),
                             *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**e, **(env or {})})
    return proc, port


def _stop(proc, tmp_path):
    """SIGTERM; returns seconds it took to exit."""
    t0 = time.monotonic(); proc.send_signal(signal.SIGTERM)
    try: proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill(); pytest.fail("tradelab up did not stop within 20 s:\n" + (tmp_path / "desk.log").read_text())
    return time.monotonic() - t0


def test_up_serves_health_and_the_api_runs_the_due_cycle_and_stops_on_sigterm_leaving_no_child(tmp_path, data_dir,
                                                                                             settings_1m):
    proc, port = _up(tmp_path, data_dir, settings_1m)
    try:
        code, body = _wait(lambda: _health(port)[0] and _health(port), 120, "/health answers")
        assert code == 200, body
        assert body["database"]["ok"] and body["exchange"]["ok"] and body["scheduler"]["ok"], body
        assert body["kill_switch"]["halted"] is False and body["venue"] == "sim"
        eng = sa.create_engine(f"sqlite:///{data_dir / 'tradelab.db'}")
        add_user(eng, "ops", "a long enough password", "viewer", "test")
        key, url = create_api_key(eng, "ops", "test", "test"), f"http://127.0.0.1:{port}/api/v1/status"
        with pytest.raises(urllib.error.HTTPError) as no_key: urllib.request.urlopen(url, timeout=10)
        assert no_key.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as r: assert json.load(r)["venue"] == "sim"
        q = "select status, run_key from pipeline_runs where pipeline = 'trading_cycle' and run_key is not null " \
            "order by id limit 1"
        def done():
            with eng.connect() as c: rows = c.execute(sa.text(q)).all()
            return [r for r in rows if r[0] not in ("queued", "running")]
        rows = _wait(done, 150, "the latest closed 1-minute candle's cycle ran:\n" + str(tmp_path / "desk.log"))
        assert rows[0][0] == "ok", (tmp_path / "desk.log").read_text()[-3000:]
        assert rows[0][1].startswith("trading_cycle:1:")
        kids = _descendants(proc.pid)
    finally:
        took = _stop(proc, tmp_path)
    assert proc.returncode == 0, (tmp_path / "desk.log").read_text()[-3000:]
    assert took < 10
    time.sleep(0.5)
    left = {k for k in kids if Path(f"/proc/{k}").exists()}
    assert not left, f"left running after stop: {left}"


def test_health_says_503_and_names_the_exchange_when_it_is_down_and_the_desk_keeps_going(tmp_path, data_dir,
                                                                                        settings_1m):
    proc, port = _up(tmp_path, data_dir, settings_1m, "--no-dashboard",
                     env={"BYBIT_BASE_URL": f"http://127.0.0.1:{_free_port()}"})
    try:
        code, body = _wait(lambda: _health(port)[0] and _health(port), 120, "/health answers")
        assert code == 503 and "exchange" in body["down"] and body["database"]["ok"], body
        time.sleep(1)
        assert proc.poll() is None and _health(port)[0] == 503
    finally:
        _stop(proc, tmp_path)


def test_with_redis_unreachable_events_fall_back_to_in_process_and_health_reports_it(tmp_path, data_dir,
                                                                                     settings_1m):
    proc, port = _up(tmp_path, data_dir, settings_1m, "--no-dashboard",
                     env={"REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"})
    try:
        code, body = _wait(lambda: _health(port)[0] and _health(port), 120, "/health answers")
        assert body["bus"]["ok"] is False and body["bus"].get("mode") == "in-process", body
        assert code == 200 and "bus" not in body["down"]
    finally:
        _stop(proc, tmp_path)
