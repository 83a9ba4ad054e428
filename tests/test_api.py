"""The JSON API over real HTTP: Tornado on a free port, the desk's service layer on SQLite and the simulator."""
import io, json, time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab import auth, service
from tradelab.api import ROUTES, Api, api_routes, serve_in_thread
from tradelab.core import D, SystemClock, dumps
from tradelab.db import Analysis, AuditLog, PipelineRun, Trade
from tradelab.exchange import OrderRequest
from tradelab.orders import place_idempotent, reconcile
from tradelab.settings import load_env, load_settings
from tradelab.simulator import start_in_thread
from tradelab.trades import sync_trades
from tradelab.venues import make_port

INI = Path(__file__).resolve().parents[1] / "settings.ini"
V1 = "/api/v1"


@pytest.fixture
def sim():
    h = start_in_thread(rate_limits={"order": 100_000, "read": 100_000, "position": 100_000})
    yield h
    h.stop()


@pytest.fixture
def cheap_hashes(monkeypatch):
    from argon2 import PasswordHasher
    monkeypatch.setattr(auth, "HASHER", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def desk(sqlite_engine, sim, data_dir, cheap_hashes):
    """A desk stand-in: SQLite, the simulator's port (venue sim), the wall clock, settings.ini; users ann/tia/vic."""
    clock, env = SystemClock(), load_env(bybit_base_url=sim.url)
    settings = lambda: load_settings(INI)
    d = SimpleNamespace(engine=sqlite_engine, venue="sim", clock=clock, settings=settings, env=env,
                        settings_path=INI, data_dir=data_dir, keys={})
    d.port = make_port(sqlite_engine, env, settings(), clock)
    for name, role in (("ann", "admin"), ("tia", "trader"), ("vic", "viewer")):
        auth.add_user(sqlite_engine, name, f"{name} has a long password", role, "test", clock)
        d.keys[name] = auth.create_api_key(sqlite_engine, name, "test", "test", clock)
    return d


@pytest.fixture
def api(desk):
    srv = serve_in_thread(api_routes(desk, rate=1000, burst=1000))
    yield SimpleNamespace(url=srv.url + V1, desk=desk)
    srv.stop()


def call(api, method, path, who=None, key=None, **kw):
    headers = kw.pop("headers", {})
    if who or key: headers["Authorization"] = f"Bearer {key or api.desk.keys[who]}"
    return requests.request(method, api.url + path, headers=headers, timeout=60, **kw)


def same(data):
    "What the service returned, as the API encodes it."
    return json.loads(dumps(data))


def audits(engine, **where) -> list:
    with Session(engine) as s:
        q = sa.select(AuditLog).order_by(AuditLog.id)
        for k, v in where.items(): q = q.where(getattr(AuditLog, k) == v)
        return [(a.actor, a.action, a.target, a.details) for a in s.scalars(q)]


def open_trade(d, symbol="BTCUSDT", qty="0.01") -> int:
    "A trade opened on the simulator the way the cycle opens one: pending row, entry order, sync."
    with Session(d.engine) as s, s.begin():
        t = Trade(venue="sim", symbol=symbol, side="LONG", status="pending", qty=D(qty))
        s.add(t); s.flush(); tid = t.id
    req = OrderRequest(symbol, "Buy", D(qty), "Market", order_link_id=f"test-{tid}-entry")
    place_idempotent(d.engine, d.port, req, "sim", trade_id=tid, clock=d.clock)
    reconcile(d.engine, d.port, "sim", d.clock); sync_trades(d.engine, d.port, "sim", d.clock)
    return tid


def seed_records(engine):
    with Session(engine) as s, s.begin():
        for i, (status, pnl) in enumerate((("closed", "12.5"), ("closed", "-4"), ("cancelled", None))):
            s.add(Trade(venue="sim", symbol="ETHUSDT", side="LONG", status=status, qty=D("0.1"),
                        pnl=None if pnl is None else D(pnl), prompt_version="technical@1"))
        s.add(Trade(venue="paper", symbol="BTCUSDT", side="SHORT", status="closed", qty=D(1), pnl=D(3)))
        for rec in ("LONG", "HOLD"):
            s.add(Analysis(venue="sim", source="live", symbol="BTCUSDT", timeframe="60", status="accepted",
                           recommendation=rec, confidence=D("0.7"), prompt_version="technical@1", model="technical"))
        s.add(PipelineRun(pipeline="trading_cycle", status="ok", duration_ms=1200))


def test_each_read_answers_what_the_service_answers(api):
    d = api.desk; e = d.engine
    seed_records(e)
    expected = {
        "/status": service.status(e, d.port, d.settings(), d.clock, "sim"),
        "/positions": service.positions(d.port, e, "sim"),
        "/trades": service.trades(e, "sim"), "/trades?venue=paper": service.trades(e, "paper"),
        "/trades?status=closed,cancelled&limit=2": service.trades(e, "sim", ["closed", "cancelled"], 2),
        "/analyses": service.analyses(e, "sim"), "/performance": service.performance(e, ["sim"]),
        "/prompts?venue=sim&venue=paper": service.prompt_stats(e, ["sim", "paper"]),
        "/config": service.config_get(e, INI, d.env), "/runs?status=ok": service.runs(e, status="ok")}
    for path, want in expected.items():
        r = call(api, "GET", path, "vic")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), (path, r.text)
        assert r.json() == same(want), path
    trades = call(api, "GET", "/trades", "vic").json()
    assert [t["pnl"] for t in trades[:3]] == [None, "-4", "12.5"]  # money as exact strings, newest first
    assert call(api, "GET", "/config", "vic").json()["environment"]["bybit_api_key"] in ("", "***")


def test_no_route_answers_without_a_valid_key_except_the_openapi_document(api):
    forged = "tl_" + "A" * 43
    for r in ROUTES:
        path = r.path.replace("{symbol}", "BTCUSDT")
        for key in (None, forged, api.desk.keys["tia"][:-2]):
            res = call(api, r.method, path, key=key, json={})
            assert res.status_code == 401 and res.headers["WWW-Authenticate"].startswith("Bearer"), (path, key)
            assert res.json()["error"]
    assert call(api, "GET", "/openapi.json").status_code == 200
    assert not service.status(api.desk.engine, api.desk.port, api.desk.settings(), api.desk.clock)["halted"]
    refusals = audits(api.desk.engine, actor="api:anonymous")
    assert len(refusals) == 3 * len(ROUTES) and {a[3]["status"] for a in refusals} == {401}


def test_a_viewer_reads_but_may_not_close_a_position(api):
    open_trade(api.desk)
    r = call(api, "POST", "/positions/BTCUSDT/close", "vic")
    assert r.status_code == 403 and "viewer" in r.json()["error"]
    assert [p["symbol"] for p in call(api, "GET", "/positions", "vic").json()] == ["BTCUSDT"]
    assert ("api:vic", "api.post_close") in [a[:2] for a in audits(api.desk.engine)]


def test_a_trader_closes_a_position_and_its_trade_shows_closed(api):
    tid = open_trade(api.desk)
    r = call(api, "POST", "/positions/btcusdt/close", "tia")
    assert r.status_code == 200, r.text
    assert (r.json()["trade"], r.json()["trade_status"]) == (tid, "closed")
    assert call(api, "GET", "/positions", "tia").json() == []
    (t,) = call(api, "GET", "/trades?status=closed", "tia").json()
    assert (t["id"], t["close_reason"]) == (tid, "manual") and t["pnl"] is not None
    acts = [(a[1], a[3].get("status")) for a in audits(api.desk.engine, actor="api:tia")]
    assert acts == [("position.manual", "accepted"), ("api.post_close", 200)]
    assert call(api, "POST", "/positions/BTCUSDT/close", "tia").status_code == 404  # nothing left to close


def test_a_stop_loss_on_the_wrong_side_is_refused_with_the_reason_and_nothing_changes(api):
    open_trade(api.desk)
    mark = D(call(api, "GET", "/positions", "tia").json()[0]["mark"])
    r = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json={"stop_loss": str(round(mark * D("1.2")))})
    assert r.status_code == 422 and "stop loss of a long must be below the mark price" in r.json()["error"]
    assert call(api, "GET", "/positions", "tia").json()[0]["stop_loss"] is None
    ok = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json={"stop_loss": str(round(mark * D("0.8")))})
    assert ok.status_code == 200, ok.text
    assert D(call(api, "GET", "/positions", "tia").json()[0]["stop_loss"]) == round(mark * D("0.8"))


def test_bad_queries_and_bodies_are_refused_naming_the_fields(api):
    for path, field in (("/trades?limit=5000", "limit"), ("/trades?status=opened", "status.0"),
                        ("/trades?colour=red", "colour"), ("/analyses?venue=moon", "venue"),
                        ("/runs?limit=0", "limit")):
        r = call(api, "GET", path, "vic")
        assert r.status_code == 422 and r.json()["fields"][0]["field"] == field, (path, r.text)
    r = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json={"stop_loss": "abc", "extra": 1})
    assert r.status_code == 422 and {f["field"] for f in r.json()["fields"]} == {"stop_loss", "extra"}
    assert call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json={}).status_code == 422
    assert call(api, "POST", "/halt", "tia", data="stop", headers={"Content-Type": "text/plain"}).status_code == 415
    assert not service.status(api.desk.engine, api.desk.port, api.desk.settings(), api.desk.clock)["halted"]


def test_halt_and_resume_flip_the_kill_switch_for_a_trader_only(api):
    assert call(api, "POST", "/halt", "vic", json={"reason": "x"}).status_code == 403
    r = call(api, "POST", "/halt", "tia", json={"reason": "news"})
    assert r.status_code == 200 and r.json()["halted"] is True
    assert call(api, "GET", "/status", "vic").json()["blocked_by"] == ["kill_switch: trading is halted"]
    assert call(api, "POST", "/resume", "tia").json()["halted"] is False
    assert [a[1] for a in audits(api.desk.engine, actor="api:tia")] == ["halt", "api.post_halt", "resume",
                                                                        "api.post_resume"]


def test_a_setting_that_breaks_a_rule_is_refused_and_nothing_is_stored(api):
    before = call(api, "GET", "/config", "ann").json()
    r = call(api, "POST", "/config", "ann", json={"changes": {"risk.max_slots": 3, "risk.max_drawdown": 2}})
    assert r.status_code == 422 and "max_drawdown" in r.json()["error"] and "nothing was changed" in r.json()["error"]
    assert call(api, "GET", "/config", "ann").json() == before
    assert call(api, "POST", "/config", "tia", json={"changes": {"risk.max_slots": 3}}).status_code == 403
    dry = call(api, "POST", "/config", "ann", json={"changes": {"risk.max_slots": 3}, "dry_run": True}).json()
    assert dry["diff"] == [{"key": "risk.max_slots", "old": 5, "new": 3}] and dry["saved"] == []
    assert call(api, "GET", "/config", "ann").json() == before
    ok = call(api, "POST", "/config", "ann", json={"changes": {"risk.max_slots": 3}})
    assert ok.status_code == 200 and ok.json()["saved"] == ["risk.max_slots"]
    assert call(api, "GET", "/config", "vic").json()["overrides"] == {"risk": {"max_slots": "3"}}


def _png(size=(64, 48)) -> bytes:
    from PIL import Image
    out = io.BytesIO(); Image.new("RGB", size, (20, 30, 40)).save(out, "PNG"); return out.getvalue()


def test_an_oversized_or_non_image_upload_is_refused_and_nothing_is_stored(api):
    api.desk.settings = lambda: load_settings(INI, {"analysis": {"max_image_bytes": "20000"}})
    cases = ((b"\x89PNG\r\n\x1a\n" + b"\0" * 30_000, 413, "over the 20,000-byte limit"),
             (b"GIF89a\x01\x00\x01\x00", 415, "not a PNG, JPEG or WebP"), (b"hello", 415, "not a PNG, JPEG or WebP"),
             (_png()[:60], 415, "cannot be decoded"))
    for body, code, says in cases:
        r = call(api, "POST", "/analyze", "tia", files={"image": ("chart.png", body, "image/png")},
                 data={"symbol": "BTCUSDT"})
        assert r.status_code == code and says in r.json()["error"], r.text
    with Session(api.desk.engine) as s: assert s.scalar(sa.select(sa.func.count()).select_from(Analysis)) == 0
    assert len(audits(api.desk.engine, action="analysis.request.refused")) == 4
    assert [a[3]["status"] for a in audits(api.desk.engine, action="api.post_analyze")] == [413, 415, 415, 415]


def test_analyse_now_by_symbol_or_an_uploaded_chart(api):
    r = call(api, "POST", "/analyze", "tia", json={"symbol": "BTCUSDT", "timeframe": "60"})
    assert r.status_code == 200 and r.json()["prompt_version"] == "technical@1", r.text
    no_model = call(api, "POST", "/analyze", "tia", files={"image": ("c.png", _png(), "image/png")})
    assert no_model.status_code == 422 and "vision" in no_model.json()["error"]
    from tradelab.fakellm import start_fake_llm
    llm = start_fake_llm()
    try:
        api.desk.env = load_env(bybit_base_url="", openai_base_url=llm.base_url, openai_api_key="k")
        up = call(api, "POST", "/analyze", "tia", files={"image": ("c.png", _png(), "image/png")},
                  data={"symbol": "ETHUSDT", "prompt": "chart_read@1"})
        assert up.status_code == 200 and up.json()["prompt_version"] == "chart_read@1", up.text
    finally:
        llm.stop()
    assert call(api, "POST", "/analyze", "vic", json={"symbol": "BTCUSDT"}).status_code == 403


def test_trading_on_the_live_venue_needs_a_fresh_totp_code(api):
    import pyotp
    d = api.desk
    open_trade(d)
    d.venue = "live"  # the simulator's port stands in for the live exchange
    mark = D(call(api, "GET", "/positions", "tia").json()[0]["mark"])
    body = {"stop_loss": str(round(mark * D("0.8")))}
    r = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json=body)
    assert r.status_code == 403 and "X-TOTP" in r.json()["error"]
    secret = auth.enroll_totp(d.engine, "tia", d.data_dir, "ann", d.clock)["secret"]
    code = pyotp.TOTP(secret).now()
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json=body, headers={"X-TOTP": wrong}).status_code == 403
    assert call(api, "GET", "/positions", "tia").json()[0]["stop_loss"] is None
    ok = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json=body, headers={"X-TOTP": code})
    assert ok.status_code == 200, ok.text
    again = call(api, "POST", "/positions/BTCUSDT/tpsl", "tia", json=body, headers={"X-TOTP": code})
    assert again.status_code == 403 and "already used" in again.json()["error"]
    assert call(api, "POST", "/halt", "tia", json={"reason": "stop"}).status_code == 200  # halting needs no code
    d.venue = "sim"
    live = call(api, "POST", "/config", "ann", json={"changes": {"trading.venue": "live"}})
    assert live.status_code == 403 and "X-TOTP" in live.json()["error"]


def test_a_key_over_its_rate_is_refused_with_retry_after_and_other_keys_are_not(desk):
    assert (Api(desk).limiter.rate, Api(desk).limiter.burst) == (10, 20)  # the default: 10/s, bursts of 20
    srv = serve_in_thread(api_routes(desk, rate=0.5, burst=3))
    try:
        api = SimpleNamespace(url=srv.url + V1, desk=desk)
        codes = [call(api, "GET", "/trades", "tia") for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert int(codes[3].headers["Retry-After"]) >= 1 and "rate limit" in codes[3].json()["error"]
        assert call(api, "GET", "/trades", "vic").status_code == 200
    finally:
        srv.stop()
    refused = [a[3] for a in audits(desk.engine, action="api.get_trades")]  # a run of refusals: one row
    assert [(a["status"], a["key"]) for a in refused] == [(429, desk.keys["tia"][:10])]


def test_a_revoked_key_stops_working_once_its_remembered_user_expires(desk):
    srv = serve_in_thread(api_routes(desk, key_seconds=0.2))
    try:
        api = SimpleNamespace(url=srv.url + V1, desk=desk)
        assert call(api, "GET", "/trades", "tia").status_code == 200
        assert auth.revoke_api_key(desk.engine, "tia", desk.keys["tia"][:10], "ann") == 1
        deadline = time.monotonic() + 10
        while call(api, "GET", "/trades", "tia").status_code == 200 and time.monotonic() < deadline: time.sleep(0.05)
        assert call(api, "GET", "/trades", "tia").status_code == 401
    finally:
        srv.stop()


def test_the_openapi_document_lists_every_route_and_the_replies_match_it(api):
    import fastjsonschema  # the subset pydantic writes; jsonschema itself takes seconds to import
    doc = call(api, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, V1 + r.path) for r in ROUTES} | {("GET", V1 + "/openapi.json")}
    seed_records(api.desk.engine); open_trade(api.desk)
    checks = [(V1 + p, "200", p) for p in ("/status", "/positions", "/trades", "/analyses", "/runs")]
    for path, code, asked in checks + [(V1 + "/trades", "422", "/trades?limit=0")]:
        schema = doc["paths"][path]["get"]["responses"][code]["content"]["application/json"]["schema"]
        reply = call(api, "GET", asked, "vic").json()
        assert reply, asked
        fastjsonschema.compile({**schema, "components": doc["components"]})(reply)


def test_unknown_paths_and_methods_answer_json(api):
    r = call(api, "GET", "/nope", "vic")
    assert r.status_code == 404 and "openapi.json" in r.json()["error"]
    r = call(api, "GET", "/halt", "tia")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
