"""Scheduler benchmarks: jitter (run start - candle close - settle) over 50 closes, and one trading-cycle run's wall
time for 1 and 5 symbols on the built-in simulator, child process and kernel start included.

    .venv/bin/python bench/bench_scheduler.py [--closes 50] [--symbols 1,5]

Jitter: the scheduler runs its own loop thread on a clock that moves in real time but is jumped over the idle minutes
between closes (to 0.3 s before each 1-minute close, settle 0), with a stand-in cycle notebook. Each close's run is
timed from close + settle to the moment its child process was started (Popen returned), on that clock. The bench then
stops the run's process at once (its work is not what is measured; on this machine python + kernel start take
seconds) and waits until the scheduler has reaped it, so the series is free and every close starts a run.
The simulator knows 5 instruments (tradelab.matching.INSTRUMENTS), so the largest cycle measured is 5 symbols.
"""
import argparse, datetime as dt, logging, os, sys, tempfile, threading, time
from pathlib import Path

import nbformat as nbf
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab.config_store import effective_settings
from tradelab.core import UTC, SystemClock, parse_time
from tradelab.db import PipelineRun, make_engine
from tradelab.migrate import upgrade
from tradelab.scheduler import Scheduler, cycle_slot, terminate, _tree

ROOT = Path(__file__).resolve().parents[1]


class JumpClock:
    "Real time from a settable point: the bench skips the idle time between closes, the scheduler waits for real."
    def __init__(self, start: dt.datetime):
        self._base, self._m0, self._lock = start, time.monotonic(), threading.Lock()
    def now(self) -> dt.datetime:
        with self._lock: return self._base + dt.timedelta(seconds=time.monotonic() - self._m0)
    def jump(self, to: dt.datetime):
        with self._lock: self._base, self._m0 = to, time.monotonic()


def _pipeline(root: Path, name: str, body: str):
    nb = nbf.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}})
    p = nbf.v4.new_code_cell("run_id = None\ntimeframe = None\nsettings_path = None", metadata={"tags": ["parameters"]})
    nb.cells = [p, nbf.v4.new_code_cell(body)]
    root.mkdir(parents=True, exist_ok=True)
    nbf.write(nb, root / f"{name}.ipynb")


def _p(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def jitter(closes: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    eng = make_engine(f"sqlite:///{tmp}/b.db"); upgrade(eng)
    _pipeline(tmp / "pipes", "trading_cycle", "pass"); _pipeline(tmp / "pipes", "daily_report", "pass")
    ini = tmp / "settings.ini"
    ini.write_text("[trading]\nsymbols = BTCUSDT\ntimeframes = 1\n[schedule]\nsettle_seconds = 0\n"
                   "daily_report_at = 00:00\n")
    clock = JumpClock(parse_time("2024-06-03T00:00:30Z"))
    with Session(eng) as x:  # the catch-up run of the candle before the bench's first close counts as done
        x.add(PipelineRun(pipeline="trading_cycle", status="ok", run_key="trading_cycle:1:2024-06-02T23:59Z"))
        x.commit()
    env = {**os.environ, "TRADELAB_DATA_DIR": str(tmp / "data")}
    s = Scheduler(eng, lambda: effective_settings(eng, ini), clock, env=env, root=tmp / "pipes")
    s.start()
    keys = set()
    try:
        for i in range(closes):
            slot = cycle_slot(clock.now() + dt.timedelta(minutes=1), "1", 0)  # the next close
            keys.add(slot.key)
            clock.jump(slot.due - dt.timedelta(seconds=0.3)); s.wake()
            deadline = time.monotonic() + 30
            while not any(j["key"] == slot.key for j in s.jitter()) and time.monotonic() < deadline: time.sleep(0.01)
            for r in s.state()["running"]: terminate(_tree(r["pid"]), 5)
            while s.state()["running"] and time.monotonic() < deadline: time.sleep(0.01)
    finally:
        s.stop(5)
    rows = [j for j in s.jitter() if j["key"] in keys]
    ms = [j["jitter_s"] * 1000 for j in rows]
    started = [j["jitter_s"] * 1000 for j in rows if j["outcome"] == "started"]
    return {"closes": len(rows), "p50_ms": _p(ms, 0.5), "p95_ms": _p(ms, 0.95), "max_ms": max(ms),
            "started": len(started), "started_p95_ms": _p(started, 0.95) if started else None,
            "skipped": sum(j["outcome"] == "skipped" for j in rows)}


def cycle_wall(symbols: int) -> dict:
    from tradelab.matching import INSTRUMENTS
    from tradelab.simulator import start_in_thread
    tmp = Path(tempfile.mkdtemp(prefix="bench-cycle-"))
    eng = make_engine(f"sqlite:///{tmp}/c.db"); upgrade(eng)
    ini = tmp / "settings.ini"
    text = (ROOT / "settings.ini").read_text().replace("symbols = BTCUSDT, ETHUSDT, SOLUSDT",
                                                       "symbols = " + ", ".join(list(INSTRUMENTS)[:symbols]))
    ini.write_text(text.replace("timeframes = 60, 240", "timeframes = 60"))
    with Session(eng) as s:  # only the cycle: today's report counts as done
        day = SystemClock().now().astimezone(UTC).strftime("%Y-%m-%d")
        for d in (day, (SystemClock().now() - dt.timedelta(days=1)).strftime("%Y-%m-%d")):
            s.add(PipelineRun(pipeline="daily_report", status="ok", run_key=f"daily_report:D:{d}T00:00Z"))
        s.commit()
    sim = start_in_thread(port=0)
    env = {**os.environ, "TRADELAB_DATA_DIR": str(tmp / "data"), "BYBIT_BASE_URL": sim.url}
    env.pop("REDIS_URL", None)
    sched = Scheduler(eng, lambda: effective_settings(eng, ini), SystemClock(), env=env, settings_path=str(ini),
                      cwd=ROOT)
    try:
        t0 = time.perf_counter(); sched.tick()
        q = sa.select(PipelineRun).where(PipelineRun.pipeline == "trading_cycle")
        while True:
            with Session(eng) as s: run = s.scalars(q).first()
            if run and run.status not in ("queued", "running"): break
            time.sleep(0.1); sched.tick()
        wall = time.perf_counter() - t0
    finally:
        sched.stop(5); sim.stop()
    return {"symbols": symbols, "status": run.status, "wall_s": round(wall, 2),
            "papermill_s": round(run.duration_ms / 1000, 2), "error": run.error}


def main():
    logging.getLogger("tradelab").addHandler(logging.NullHandler())
    logging.getLogger("tradelab").propagate = False  # the scheduler's own log lines are not the figures
    ap = argparse.ArgumentParser()
    ap.add_argument("--closes", type=int, default=50)
    ap.add_argument("--symbols", default="1,5")
    a = ap.parse_args()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}   (load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    j = jitter(a.closes)
    print(f"scheduler jitter over {j['closes']} closes: p50 {j['p50_ms']:.1f} ms, p95 {j['p95_ms']:.1f} ms, "
          f"max {j['max_ms']:.1f} ms ({j['started']} started, p95 {j['started_p95_ms'] or 0:.1f} ms; "
          f"{j['skipped']} skipped while the previous run was busy)")
    for n in (int(x) for x in a.symbols.split(",")):
        c = cycle_wall(n)
        print(f"trading_cycle run, {n} symbol(s), 1 timeframe, sim: {c['status']} in {c['wall_s']} s wall "
              f"(claim -> recorded end; papermill incl. kernel start {c['papermill_s']} s)"
              + (f" error: {c['error']}" if c["error"] else ""))


if __name__ == "__main__":
    main()
