"""kill -9 the trading cycle at seeded points (before and after each commit and each exchange call); after a restart and
a reconciliation the database equals the exchange every time: nothing duplicated, nothing left pending."""
import collections, datetime as dt, json, os, random, shutil, subprocess, sys, textwrap
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tradelab.bybit import BybitPort, make_http
from tradelab.core import ManualClock, SystemClock
from tradelab.db import Base, Fill, Order, Trade, make_engine
from tradelab.migrate import upgrade
from tradelab.orders import IN_DOUBT_GRACE, reconcile
from tradelab.simulator import Market, start_in_thread
from tradelab.trades import sync_trades

pytestmark = pytest.mark.slow

KEY, SECRET = "tradelab-sim", "tradelab-sim-secret"
# the simulator's frozen market: the technical analyzer says SHORT BTCUSDT, LONG SOLUSDT (60)
MARKET_AT = "2024-06-10T00:00:00Z"
SETTINGS = {"trading": {"symbols": "BTCUSDT,SOLUSDT", "timeframes": "60"}}
SEED, RUNS = 20260601, 20

# The driver runs one trading cycle as the scheduled pipeline does, with hooks that touch no production code: SQLAlchemy
# events around every commit and a proxy around every exchange call count "points"; at point N the process kills itself.
# It is a small fork server: tradelab is imported once, and each run is a fresh child process that dies by SIGKILL.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys, traceback
    from sqlalchemy import event
    from sqlalchemy.orm import Session
    from tradelab.bybit import BybitPort, make_http
    from tradelab.core import SystemClock
    from tradelab.cycle import run_cycle
    from tradelab.db import make_engine
    from tradelab.settings import Settings

    def run(url, sim_url, kill_at, trace, settings):
        log, n, touched = open(trace, "w"), [0], [""]

        def point(what):
            n[0] += 1
            log.write(json.dumps([n[0], what]) + "\\n"); log.flush()
            if n[0] == kill_at: os.kill(os.getpid(), signal.SIGKILL)

        def before_commit(session):
            names = {type(o).__name__ for o in list(session.new) + list(session.dirty)}
            names |= session.info.pop("flushed", set())
            touched[0] = ",".join(sorted(names))

        def after_flush(session, ctx):
            seen = session.info.setdefault("flushed", set())
            seen.update(type(o).__name__ for o in list(session.new) + list(session.dirty))

        event.listen(Session, "before_commit", before_commit)
        event.listen(Session, "after_flush", after_flush)
        event.listen(Session, "after_commit", lambda session: point(f"after commit {touched[0]}"))

        class Crashing:
            "Every exchange call is two points: before it is sent and after its answer came back."
            def __init__(self, port): self._port = port
            def __getattr__(self, name):
                v = getattr(self._port, name)
                if not callable(v): return v
                def call(*a, **k):
                    point(f"before {name}")
                    out = v(*a, **k)
                    point(f"after {name}")
                    return out
                return call

        engine = make_engine(url)
        event.listen(engine, "commit", lambda conn: point(f"before commit {touched[0]}"))
        port = Crashing(BybitPort(make_http("testnet", "%s", "%s", sim_url, timeout=10), "sim", venue="sim"))
        run_cycle(engine, port, Settings.model_validate(settings), clock=SystemClock())
        log.write(json.dumps([n[0] + 1, "done"]) + "\\n"); log.close()

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try: run(**job); code = 0
            except BaseException: traceback.print_exc(); code = 1
            sys.stderr.flush(); os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), flush=True)
""" % (KEY, SECRET))


class Driver:
    "The fork server in a subprocess: `run` starts one cycle in a fresh child and returns its exit (-9 when killed)."
    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, **job) -> int:
        self.proc.stdin.write(json.dumps(job) + "\n"); self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the driver died: {self.proc.stderr.read()[-3000:]}"
        return json.loads(line)

    def close(self):
        self.proc.stdin.close(); self.proc.wait(30)


def _sim():
    return start_in_thread(market=Market(clock=ManualClock(MARKET_AT)),
                           rate_limits={"order": 100_000, "read": 100_000, "position": 100_000})


def _drive(driver, url, sim, kill_at, tmp) -> list:
    "One cycle until it finishes or kills itself at point `kill_at`; returns the points it passed."
    trace = tmp / f"trace-{kill_at}.jsonl"
    code = driver.run(url=url, sim_url=sim.url, kill_at=kill_at, trace=str(trace), settings=SETTINGS)
    points = [json.loads(line) for line in trace.read_text().splitlines()]
    if kill_at: assert code == -9 and points[-1][0] == kill_at, (code, points[-3:])
    else: assert code == 0 and points[-1][1] == "done", (code, points[-3:])
    return points


def _recover(engine, sim) -> None:
    """The restart: what the next cycle does first (reconcile, then bring trades in line), on a clock past the grace an
    intent in doubt gets (a request on its way could be accepted until then: it is settled, not left in doubt)."""
    port = BybitPort(make_http("testnet", KEY, SECRET, sim.url, timeout=10), "sim", venue="sim")
    later = ManualClock(SystemClock().now() + IN_DOUBT_GRACE + dt.timedelta(seconds=1))
    reconcile(engine, port, "sim", later)
    sync_trades(engine, port, "sim", later)
    assert reconcile(engine, port, "sim", later) == {"settled": 0, "never_reached": 0, "in_doubt": 0,
                                                     "unknown_on_db": 0, "fills": 0}


def _assert_database_equals_exchange(engine, sim, where: str) -> None:
    on_exchange = sim.call(lambda: [dict(o) for o in sim.engine.orders.values()])
    positions = sim.call(lambda: sim.engine.positions())
    execs = sim.call(lambda: [dict(x) for x in sim.engine.execs])
    with Session(engine) as s:
        orders = {o.client_order_id: o for o in s.scalars(sa.select(Order))}
        rows = s.scalars(sa.select(Trade)).all()
        fills = list(s.scalars(sa.select(Fill.exec_id)))
    ours = [o for o in on_exchange if o["orderLinkId"]]
    links = collections.Counter(o["orderLinkId"] for o in ours)
    assert all(c == 1 for c in links.values()), f"{where}: an order was sent twice: {links}"
    for o in ours:
        row = orders.get(o["orderLinkId"])
        assert row is not None and row.exchange_order_id == o["orderId"], \
            f"{where}: {o['orderLinkId']} has no matching row"
        assert row.status in ("accepted", "filled"), \
            f"{where}: {row.client_order_id} is {row.status} but on the exchange"
    for link, row in orders.items():
        if row.exchange_order_id is None:
            assert row.status == "rejected" and link not in links, \
                f"{where}: {link} is {row.status}, not on the exchange"
    assert not [t.id for t in rows if t.status == "pending"], f"{where}: a trade was left pending"
    held = collections.Counter()
    for t in rows:
        if t.status == "open": held[(t.symbol, "Buy" if t.side == "LONG" else "Sell")] += t.qty
    from tradelab.core import D
    assert held == collections.Counter({(p["symbol"], p["side"]): D(p["size"]) for p in positions}), where
    assert len(fills) == len(set(fills)) == len(execs) and set(fills) == {x["execId"] for x in execs}, where
    for t in rows:
        if t.status == "cancelled": assert t.close_reason in ("never_sent", "entry_rejected"), where


def _choose(points: list, k: int, seed: int) -> list[int]:
    "Points around the trade + intent commit and around place_order, then seeded picks over the whole range."
    must = set()
    for i, what in points:
        if "Trade" in what and "Order" in what and "commit" in what: must.add(i)
        if what in ("before place_order", "after place_order"): must.add(i)
    must = sorted(must)[:8]
    rng = random.Random(seed)
    rest = [i for i, _ in points if i not in must and i < len(points)]
    return sorted(must + rng.sample(rest, k - len(must)))


@pytest.fixture
def driver(tmp_path, request):
    env = dict(os.environ, TRADELAB_DATA_DIR=str(tmp_path / "data"),
               TRADELAB_PROMPTS_DIR=str(request.config.rootpath / "prompts"))
    for k in ("BYBIT_API_KEY", "BYBIT_API_SECRET", "OPENAI_API_KEY", "DATABASE_URL"): env.pop(k, None)
    d = Driver(env)
    yield d
    d.close()


def test_kill_9_at_20_seeded_points_then_reconcile_leaves_the_database_equal_to_the_exchange(tmp_path, driver):
    template = tmp_path / "template.db"
    migrated = make_engine(f"sqlite:///{template}")
    upgrade(migrated); migrated.dispose()  # the last connection closed: the file is whole (no WAL left beside it)
    sim = _sim()
    try:
        shutil.copy(template, tmp_path / "dry.db")
        dry = _drive(driver, f"sqlite:///{tmp_path}/dry.db", sim, 0, tmp_path)
    finally: sim.stop()
    whats = [w for _, w in dry]
    assert whats.count("before place_order") == 2, "the dry run places both signals (SHORT BTCUSDT, LONG SOLUSDT)"
    chosen = _choose(dry, RUNS, SEED)
    assert len(chosen) == RUNS
    for n in chosen:
        db = tmp_path / f"crash-{n}.db"
        shutil.copy(template, db)
        engine, sim = make_engine(f"sqlite:///{db}"), _sim()
        try:
            _drive(driver, f"sqlite:///{db}", sim, n, tmp_path)
            _recover(engine, sim)
            _assert_database_equals_exchange(engine, sim, f"killed at point {n} ({dry[n - 1][1]})")
        finally:
            sim.stop(); engine.dispose()


@pytest.mark.pg
def test_kill_9_around_the_entry_on_postgresql_is_repaired_the_same_way(pg_engine, tmp_path, driver):
    url = pg_engine.url.render_as_string(hide_password=False)
    sim = _sim()
    try: dry = _drive(driver, url, sim, 0, tmp_path)
    finally: sim.stop()
    first = next(i for i, w in dry if w == "before place_order")
    intent = max(i for i, w in dry[:first] if w.startswith("after commit") and "Trade" in w)
    for n in (intent, first, first + 1):  # after the trade + intent commit, before and after the order goes out
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with pg_engine.begin() as c: c.exec_driver_sql(f"truncate {names} restart identity cascade")
        sim = _sim()
        try:
            _drive(driver, url, sim, n, tmp_path)
            _recover(pg_engine, sim)
            _assert_database_equals_exchange(pg_engine, sim, f"postgresql, killed at point {n} ({dry[n - 1][1]})")
        finally: sim.stop()
