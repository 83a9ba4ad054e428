"""The desk's scheduler: slots claimed once across desks, skipped when busy, caught up once, stopped cleanly."""
import os, threading, time
from pathlib import Path

import nbformat as nbf
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab import service
from tradelab.config_store import effective_settings
from tradelab.core import ManualClock, TradelabError, parse_time
from tradelab.db import PipelineRun
from tradelab.pipelines import run_pipeline
from tradelab.scheduler import Scheduler, last_close, report_slot, run_key, _marked

T0 = "2024-06-03T09:59:30Z"  # a manual clock in the past: the runs' own clocks (real time) are always later
SETTINGS = "[trading]\nsymbols = BTCUSDT\ntimeframes = 1\n[schedule]\nsettle_seconds = 0\ndaily_report_at = 00:05\n"


def _pipeline(root, name, body):
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbf.v4.new_notebook(metadata={"kernelspec": spec})
    p = nbf.v4.new_code_cell("run_id = None\ntimeframe = None", metadata={"tags": ["parameters"]})
    nb.cells = [p, nbf.v4.new_code_cell(body)]
    root.mkdir(parents=True, exist_ok=True)
    nbf.write(nb, root / f"{name}.ipynb")


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()): return v
        time.sleep(0.2)
    pytest.fail(f"not within {timeout} s: {what}")


def _runs(engine, pipeline="trading_cycle"):
    with Session(engine) as s:
        q = sa.select(PipelineRun).where(PipelineRun.pipeline == pipeline).order_by(PipelineRun.id)
        return s.scalars(q).all()


@pytest.fixture
def desks(tmp_path, data_dir):
    """A factory of schedulers on stand-in pipelines (a cycle that sleeps, a report that passes); all stopped after."""
    root, made = tmp_path / "pipes", []
    _pipeline(root, "trading_cycle", "import time; time.sleep(120)")
    _pipeline(root, "daily_report", "pass")
    (tmp_path / "settings.ini").write_text(SETTINGS)

    def make(engine, clock, **kw):
        path = tmp_path / "settings.ini"
        env = {**os.environ, "TRADELAB_DATA_DIR": str(data_dir)}
        s = Scheduler(engine, lambda: effective_settings(engine, path), clock, env=env, root=root, **kw)
        made.append(s)
        return s
    make.root, make.settings = root, tmp_path / "settings.ini"
    yield make
    for s in made: s.stop(5)


# --- slots and keys ---

def test_the_latest_closed_candle_and_its_key_are_what_the_exchange_calls_them():
    now = parse_time("2026-11-27T02:00:03Z")
    assert last_close(now, 60) == parse_time("2026-11-27T01:00Z")
    assert run_key("trading_cycle", "60", last_close(now, 60)) == "trading_cycle:60:2026-11-27T01:00Z"
    assert last_close(now, "W") == parse_time("2026-11-16")  # weeks open on Monday
    assert last_close(now, "D") == parse_time("2026-11-26") and last_close(now, "M") == parse_time("2026-10-01")
    assert report_slot(now, "00:05").key == "daily_report:D:2026-11-27T00:00Z"
    assert report_slot(now, "03:00").key == "daily_report:D:2026-11-26T00:00Z"  # today's is not due yet


# --- claims ---

@pytest.mark.parametrize("closes", [8])
def test_two_desks_on_one_database_never_run_the_same_key(engine, desks, closes):
    clock = ManualClock(T0)
    a, b = desks(engine, clock), desks(engine, clock)
    seen = {a: [], b: []}
    for _ in range(closes):
        gate = threading.Barrier(2)
        ts = [threading.Thread(target=lambda d=d: (gate.wait(), seen[d].extend(d.tick()))) for d in (a, b)]
        for t in ts: t.start()
        for t in ts: t.join(60)
        clock.advance(60)
    outcomes = {}
    for x in seen[a] + seen[b]: outcomes.setdefault(x["key"], []).append(x["outcome"])
    assert len(outcomes) == closes + 1  # each close's cycle and the day's report
    assert all(len(o) == 2 and o.count("taken") == 1 for o in outcomes.values()), outcomes  # one desk each
    keys = [r.run_key for r in _runs(engine)]
    assert len(keys) == closes and len(set(keys)) == closes
    assert len(_runs(engine, "daily_report")) == 1
    started = [k for d in (a, b) for k in d._children.values() if k.slot.pipeline == "trading_cycle"]
    assert len(started) == 1  # the first; every later close found it still going


def test_a_restart_runs_nothing_twice_and_after_downtime_only_the_latest_missed_candle(sqlite_engine, desks):
    clock = ManualClock(T0)
    first = desks(sqlite_engine, clock)
    assert [d["outcome"] for d in first.tick()] == ["queued", "queued"]  # the 1-minute cycle and today's report
    first.stop(5)
    assert [d["outcome"] for d in desks(sqlite_engine, clock).tick()] == ["taken", "taken"]  # restarted at once
    clock.advance(hours=3)  # down for three hours: 180 one-minute candles closed meanwhile
    later = desks(sqlite_engine, clock).tick()
    assert [(d["key"], d["outcome"]) for d in later] == [("trading_cycle:1:2024-06-03T12:58Z", "queued"),
                                                         ("daily_report:D:2024-06-03T00:00Z", "taken")]
    assert [r.run_key for r in _runs(sqlite_engine)] == ["trading_cycle:1:2024-06-03T09:58Z",
                                                         "trading_cycle:1:2024-06-03T12:58Z"]


def test_a_run_still_going_when_the_next_is_due_is_recorded_skipped_with_the_reason(sqlite_engine, desks):
    clock = ManualClock(T0)
    d = desks(sqlite_engine, clock)
    d.tick()
    first = _runs(sqlite_engine)[0]
    clock.advance(60)
    assert [x["outcome"] for x in d.tick()] == ["skipped"]
    skipped = _runs(sqlite_engine)[1]
    assert (skipped.status, skipped.run_key) == ("skipped", "trading_cycle:1:2024-06-03T09:59Z")
    assert f"run {first.id} (trading_cycle:1:2024-06-03T09:58Z) of this series is still" in skipped.error
    assert [j["outcome"] for j in d.jitter()] == ["started", "started", "skipped"]


def test_a_settings_change_through_the_service_takes_effect_at_the_next_tick(sqlite_engine, desks):
    clock = ManualClock(T0)
    d = desks(sqlite_engine, clock)
    d.tick()
    service.config_set(sqlite_engine, "trading.timeframes", "1, 5", "alice", desks.settings)
    service.config_set(sqlite_engine, "schedule.settle_seconds", 20, "alice", desks.settings)
    clock.advance(40)  # 10:00:10: the 09:59 candle has closed but not settled (20 s now)
    assert d.tick() == [] and d.next_run() == parse_time("2024-06-03T10:00:20Z")
    clock.advance(10)
    keys = [x["key"] for x in d.tick()]
    assert keys == ["trading_cycle:1:2024-06-03T09:59Z", "trading_cycle:5:2024-06-03T09:55Z"]
    service.config_set(sqlite_engine, "schedule.enabled", False, "alice", desks.settings)
    clock.advance(300)
    assert d.tick() == [] and d.next_run() is None


def test_a_run_left_by_a_desk_that_died_is_recorded_lost_and_its_series_runs_again(sqlite_engine, desks):
    import socket, subprocess
    dead = subprocess.Popen(["true"]); dead.wait()
    clock = ManualClock(T0)
    with Session(sqlite_engine) as s:
        s.add(PipelineRun(pipeline="trading_cycle", status="running", run_key="trading_cycle:1:2024-06-03T09:57Z",
                          host=f"{socket.gethostname()}:{dead.pid}", started_at=clock.now()))
        s.commit()
    assert [x["outcome"] for x in desks(sqlite_engine, clock).tick()] == ["queued", "queued"]
    old = _runs(sqlite_engine)[0]
    assert old.status == "lost" and f"its desk ({socket.gethostname()}:{dead.pid}) is gone" in old.error


# --- runs: a child process each ---

def test_stop_leaves_no_process_of_a_run_behind(sqlite_engine, desks, tmp_path):
    marker = tmp_path / "kernel.pid"
    _pipeline(desks.root, "trading_cycle", f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
                                           "time.sleep(120)")
    with Session(sqlite_engine) as s:  # today's report ran already: only the cycle starts
        s.add(PipelineRun(pipeline="daily_report", status="ok", run_key="daily_report:D:2024-06-03T00:00Z")); s.commit()
    d = desks(sqlite_engine, ManualClock(T0))
    assert [x["outcome"] for x in d.tick()] == ["queued", "taken"]
    child = next(iter(d._children.values()))
    started = lambda: marker.exists() and marker.read_text() or _runs(sqlite_engine)[0].status not in ("queued",
                                                                                                  "running")
    kernel = int(_wait(started, 180, "the run's kernel started"))
    group = os.getpgid(child.proc.pid)
    assert _runs(sqlite_engine)[0].status == "running"
    d.stop(5)
    with pytest.raises(ProcessLookupError): os.killpg(group, 0)  # the run's process group is gone
    assert not Path(f"/proc/{kernel}").exists() and not _marked(d.token)
    assert (_runs(sqlite_engine)[0].status, _runs(sqlite_engine)[0].error) == ("failed", "desk stopped")


def test_a_run_that_raises_is_failed_with_its_error_and_one_that_dies_unrecorded_from_its_exit_code(sqlite_engine,
                                                                                                    desks):
    _pipeline(desks.root, "trading_cycle", "raise ValueError(f'no candles for {timeframe}')")
    _pipeline(desks.root, "daily_report", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    d = desks(sqlite_engine, ManualClock(T0)).start()
    ended = lambda p: [r for r in _runs(sqlite_engine, p) if r.status not in ("queued", "running")]
    cycle = _wait(lambda: ended("trading_cycle"), 180, "the cycle run ended")[0]
    report = _wait(lambda: ended("daily_report"), 180, "the report run ended")[0]
    assert cycle.status == "failed" and cycle.error == "ValueError: no candles for 1"
    assert report.status == "failed" and "exited with code -9 without recording the end of the run" in report.error
    assert d.state()["last"]["daily_report"]["status"] == "failed" and d.state()["ok"]


# --- taking over a claimed run (tradelab run --run-id) ---

def test_a_claimed_run_is_taken_over_once_and_a_run_key_is_recorded_once(sqlite_engine, desks):
    with Session(sqlite_engine, expire_on_commit=False) as s:
        done = PipelineRun(pipeline="daily_report", status="ok", run_key="daily_report:D:2024-06-03T00:00Z")
        s.add(done); s.commit()
    with pytest.raises(TradelabError, match=f"run {done.id} cannot be taken over .* it is daily_report ok"):
        run_pipeline(sqlite_engine, "daily_report", run_id=done.id, root=desks.root, lock_wait=0)
    with pytest.raises(TradelabError, match="run key 'daily_report:D:2024-06-03T00:00Z' is taken"):
        run_pipeline(sqlite_engine, "daily_report", run_key=done.run_key, root=desks.root)
